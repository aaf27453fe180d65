"""ms-swift's agent templates: a row's ``tools`` written into its system prompt, tool calls read back from a reply.

``swift rlhf --agent_template NAME`` picks one; a dataset row with a ``tools`` column then gets its tool list
written into the system message, as ms-swift writes it (modelscope/ms-swift 4.6.0.dev0,
swift/agent_template/: react.py, extra.py, qwen.py, hermes.py, toolbench.py, base.py). The prompt text is
ms-swift's character for character, since models were trained on it (Qwen2-7B-Agent-GRPO on react_grpo,
Qwen2.5's chat template on hermes); the code around those format strings is this project's.

Built: the templates whose text is the same for every model (react_en, react_zh, react_grpo, toolbench,
hermes, qwen_en, qwen_zh, qwen_en_parallel, qwen_zh_parallel). ms-swift's model-specific ones (glm4,
llama3, deepseek_v3_1, qwen3_coder, ...) reproduce one model family's own chat template, special tokens
included, and are not built: :data:`NOT_BUILT`.

Pure functions and frozen objects; nothing here imports a library beyond the standard one.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

from .errors import UserError

# --------------------------------------------------------------------------- the tools cell


def _decode(text: str):
    """JSON, else a Python literal (ms-swift reads both: ``str(list_of_dicts)`` cells exist), else ValueError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except Exception:  # noqa: BLE001  (literal_eval raises ValueError, SyntaxError, TypeError, MemoryError...)
        raise ValueError(f"is not JSON (nor a Python literal): {text[:60]!r}") from None


def read_tools(cell) -> list[dict]:
    """A row's ``tools`` cell as a list of tool objects in OpenAI's ``{"type": "function", "function": {...}}``
    form; ``[]`` when the cell is empty (no tools: the prompt is left as it is).

    Accepted as ms-swift accepts it: a JSON string of a list of tools (or of one tool), or a list whose items
    are tool objects or JSON strings of one. A tool is OpenAI's form or the bare function
    (``{"name", "description", "parameters"}``, xLAM's and ToolBench's). Anything else: ValueError, whose
    message completes "the 'tools' cell ...".
    """
    if cell is None:
        return []
    if isinstance(cell, str):
        if not cell.strip():
            return []
        value = _decode(cell)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    elif isinstance(cell, (list, tuple)):
        items = [_decode(item) if isinstance(item, str) else item for item in cell]
    else:
        raise ValueError(f"is of type {type(cell).__name__}, not a JSON string or a list of tool objects")
    for number, tool in enumerate(items, start=1):
        if not isinstance(tool, dict):
            raise ValueError(f"holds tool {number} of type {type(tool).__name__}, not a tool object")
    return [wrap_tool(tool) for tool in items]


def wrap_tool(tool: dict) -> dict:
    """A bare function as OpenAI's ``{"type": "function", "function": ...}``; a tool with either key as it is."""
    return tool if "type" in tool or "function" in tool else {"type": "function", "function": tool}


def unwrap_tool(tool: dict) -> dict:
    """The function inside OpenAI's form; any other object as it is."""
    return tool["function"] if "type" in tool and "function" in tool else tool


@dataclass(frozen=True)
class ToolDescription:
    """What the text templates say about one tool (ms-swift's ToolDesc)."""

    name: str
    human_name: str
    description: object  # written with str(); ms-swift does not require a string
    parameters: str  # JSON text, or the cell's own string


def describe_tool(tool: dict, number: int) -> ToolDescription:
    """The name, description and parameters of tool ``number`` (from 1), as the text templates write them."""
    function = unwrap_tool(tool)
    if not isinstance(function, dict):
        raise ValueError(f"tool {number}'s 'function' is a {type(function).__name__}, not an object")
    name = function.get("name_for_model") or function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool {number} has no 'name' (a string)")
    description = function.get("description")
    if description is None:
        description = function.get("description_for_model")
    if description is None:
        raise ValueError(f"tool {number} ({name}) has no 'description'")
    parameters = function.get("parameters") or {}
    if not isinstance(parameters, str):
        parameters = json.dumps(parameters, ensure_ascii=False)
    return ToolDescription(name, function.get("name_for_human") or name, description, parameters)


# --------------------------------------------------------------------------- tool calls


@dataclass(frozen=True)
class ToolCall:
    """One tool call read from a reply: the tool's name and its arguments as the text the model wrote
    (JSON for a well-formed call), both stripped (ms-swift's Function)."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Keywords:
    """The three markers of a ReAct-style reply."""

    action: str
    action_input: str
    observation: str


REACT = Keywords("Action:", "Action Input:", "Observation:")
QWEN = Keywords("✿FUNCTION✿:", "✿ARGS✿:", "✿RESULT✿:")


def keyword_calls(text: str, keywords: Keywords) -> list[ToolCall]:
    """The ReAct-style calls in ``text``: an action marker's text up to the next marker is the name, and the
    following action-input marker's text the arguments. An action with no input after it is no call; a second
    action before the input does not replace the first (ms-swift's reading)."""
    markers = "|".join(re.escape(marker) for marker in (keywords.action, keywords.action_input, keywords.observation))
    pieces = re.split(f"({markers})", text)  # [before, marker, text, marker, text, ...]
    calls, name = [], None
    for marker, content in zip(pieces[1::2], pieces[2::2]):
        if name is None and marker == keywords.action:
            name = content
        elif name is not None and marker == keywords.action_input:
            calls.append(ToolCall(name.strip(), content.strip()))
            name = None
    return calls


_HERMES_CALL = re.compile(r"<tool_call>(.+?)</tool_call>", re.DOTALL)


def hermes_calls(text: str) -> list[ToolCall]:
    """The ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` blocks of ``text``; a block that is not
    an object with a string 'name' and an 'arguments' is skipped (malformed)."""
    calls = []
    for block in _HERMES_CALL.findall(text):
        try:
            call = _decode(block)
        except ValueError:
            continue
        if not isinstance(call, dict) or "arguments" not in call or not isinstance(call.get("name"), str):
            continue
        arguments = call["arguments"]
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(ToolCall(call["name"].strip(), arguments.strip()))
    return calls


def _arguments_object(arguments: str):
    """A call's arguments as a JSON value where they parse (hermes writes the object), else the text."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


# --------------------------------------------------------------------------- the templates


@dataclass(frozen=True)
class AgentTemplate:
    """One of ms-swift's agent templates: how tools enter the system prompt and how calls are read back.

    ``replaces_system``: the tools text takes the place of the system prompt (the ReAct and ToolBench
    templates, as in ms-swift) instead of following it (hermes, qwen_*).
    """

    name: str
    keywords: Keywords
    replaces_system: bool

    def render(self, tools: list[dict], system: str | None = None) -> str:
        """The system message for ``tools`` (from :func:`read_tools`) and the row's own system prompt."""
        raise NotImplementedError

    def parse_tool_calls(self, text: str) -> list[ToolCall]:
        """The tool calls in a reply; ReAct's ``Action:``/``Action Input:`` are understood by every template."""
        calls = keyword_calls(text, self.keywords)
        if not calls and self.keywords != REACT:
            calls = keyword_calls(text, REACT)
        return calls

    def format_tool_calls(self, calls: list[ToolCall]) -> str:
        """The reply that makes ``calls`` in this template's format (parse_tool_calls reads it back)."""
        k = self.keywords
        return "".join(f"{k.action} {c.name}\n{k.action_input} {c.arguments}\n" for c in calls) + k.observation


def _join_names(descriptions: list[ToolDescription]) -> str:
    return ",".join(d.name for d in descriptions)


def _react_en_line(d: ToolDescription) -> str:
    return (f"{d.name}: Call this tool to interact with the {d.human_name} API. What is the {d.human_name} API "
            f"useful for? {d.description} Parameters: {d.parameters} Format the arguments as a JSON object.")


def _descriptions(tools: list[dict]) -> list[ToolDescription]:
    return [describe_tool(tool, number) for number, tool in enumerate(tools, start=1)]


class ReactEn(AgentTemplate):
    def render(self, tools, system=None):
        d = _descriptions(tools)
        return (
            "Answer the following questions as best you can. You have access to the following tools:\n\n"
            + "\n\n".join(_react_en_line(t) for t in d)
            + "\n\nUse the following format:\n\n"
            "Question: the input question you must answer\n"
            "Thought: you should always think about what to do\n"
            f"Action: the action to take, should be one of [{_join_names(d)}]\n"
            "Action Input: the input to the action\n"
            "Observation: the result of the action\n"
            "... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n"
            "Thought: I now know the final answer\n"
            "Final Answer: the final answer to the original input question\n\n"
            "Begin!\n"
        )


class ReactZh(AgentTemplate):
    def render(self, tools, system=None):
        d = _descriptions(tools)
        lines = [f"{t.name}: 调用此工具与 {t.human_name} API 进行交互。{t.human_name} 有什么用？{t.description} "
                 f"输入参数：{t.parameters} 此工具的输入应为JSON对象。" for t in d]
        return (
            "尽可能地回答以下问题。你可以使用以下工具:\n\n"
            + "\n\n".join(lines)
            + "\n\n请按照以下格式进行:\n\n"
            "Question: 需要你回答的输入问题\n"
            "Thought: 你应该总是思考该做什么\n"
            f"Action: 需要使用的工具，应该是[{_join_names(d)}]中的一个\n"
            "Action Input: 传入工具的内容\n"
            "Observation: 行动的结果\n"
            "... (这个Thought/Action/Action Input/Observation可以重复N次)\n"
            "Thought: 我现在知道最后的答案\n"
            "Final Answer: 对原始输入问题的最终答案\n\n"
            "现在开始！\n"
        )


class ReactGrpo(AgentTemplate):
    """react_en's tool lines behind a preamble that asks for ``<think>`` reasoning first (ms-swift's GRPO agent example)."""

    def render(self, tools, system=None):
        d = _descriptions(tools)
        return (
            "A conversation for tool calling between User and Assistant. The user asks a question which may be "
            "solved by calling tools, and the Assistant solves it. The assistant first thinks about the reasoning "
            "process in the mind and then provides the user with the answer. The reasoning process should be "
            "enclosed within <think> </think>tags and answer should follow the ReACT format(Action:xxx\n"
            "Action Input:xxx), i.e., <think> reasoning process here </think> Action: action here\n"
            "Action Input: parameters here\n\n"
            "Answer the following questions as best as you can. You have access to the following tools:\n\n"
            + "\n\n".join(_react_en_line(t) for t in d)
            + "\n\nUse the following format:\n\n"
            "<think>you should always think about what to do</think>\n"
            f"Action: the action to take, should be one of [{_join_names(d)}]\n"
            "Action Input: the input to the action\n"
            "Observation: the result of the action, given by the actual calling\n"
            "... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n"
            "Final Answer: the final answer to the original input question\n\n"
            "Begin!\n"
        )


class ToolBench(AgentTemplate):
    """ToolBench's prompt: the tools as one JSON list (bare functions) at the end of its instructions."""

    def render(self, tools, system=None):
        listed = json.dumps([unwrap_tool(tool) for tool in tools], ensure_ascii=False)
        return (
            "You can use many tools(functions) to do the following task.\n"
            "First I will give you the task description, and your task start.\n"
            "At each step, you need to give your thought to analyze the status now and what to do next, with a "
            "function call to actually execute your step. Your output should follow this format:\n"
            "Thought:\nAction:\nAction Input:\n\n"
            "After the call, you will get the call result, and you are now in a new state.\n"
            "Then you will analyze your status now, then decide what to do next...\n"
            "After many (Thought-call) pairs, you finally perform the task, then you can give your final answer.\n"
            "Remember:\n"
            "1.the state change is irreversible, you can't go back to one of the former state, if you want to "
            'restart the task, say "I give up and restart".\n'
            "2.All the thought is short, at most in 5 sentence.\n"
            "3.You can do more then one try, so if your plan is to continuously try some conditions, you can do one "
            "of the conditions per try.\n"
            "Let's Begin!\n"
            "Task description: You should use functions to help handle the real time user queries. Remember:\n"
            '1.ALWAYS call "Finish" function at the end of the task. And the final answer should contain enough '
            "information to show to the user,If you can't handle the task, or you find that function calls always "
            "fail(the function is not valid now), use function Finish->give_up_and_restart.\n"
            "2.Do not use origin tool names, use only subfunctions' names.\n"
            f"Specifically, you have access to the following APIs: {listed}"
        )


class Hermes(AgentTemplate):
    """Qwen2.5's (and NousResearch Hermes') tool prompt: each tool as one JSON line inside ``<tools>``, calls
    as JSON inside ``<tool_call>`` tags. It follows the system prompt, which is '' when there is none (ms-swift
    would put its model template's default system there: give that with --system)."""

    def render(self, tools, system=None):
        return (
            f"{system or ''}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            + "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
            + "\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )

    def parse_tool_calls(self, text):
        return hermes_calls(text) or keyword_calls(text, REACT)

    def format_tool_calls(self, calls):
        return "\n".join(
            "<tool_call>\n" + json.dumps({"name": c.name, "arguments": _arguments_object(c.arguments)}, ensure_ascii=False)
            + "\n</tool_call>"
            for c in calls
        )


def _qwen_lines(d: list[ToolDescription], chinese: bool) -> str:
    parameters = "输入参数：" if chinese else "Parameters: "
    formatted = "此工具的输入应为JSON对象。" if chinese else "Format the arguments as a JSON object."
    return "\n\n".join(f"### {t.human_name}\n\n{t.name}: {t.description} {parameters}{t.parameters} {formatted}" for t in d)


class QwenEn(AgentTemplate):
    """Qwen-Agent's function-calling prompt (✿FUNCTION✿ / ✿ARGS✿ markers), after the system prompt."""

    def render(self, tools, system=None):
        d = _descriptions(tools)
        return (
            f"{system or ''}\n\n# Tools\n\n## You have access to the following tools:\n\n"
            + _qwen_lines(d, chinese=False)
            + "\n\n## When you need to call a tool, please insert the following command in your reply, which can be "
            "called zero or multiple times according to your needs:\n\n"
            f"✿FUNCTION✿: The tool to use, should be one of [{_join_names(d)}]\n"
            "✿ARGS✿: The input of the tool\n"
            "✿RESULT✿: Tool results\n"
            "✿RETURN✿: Reply based on tool results. Images need to be rendered as ![](url)"
        )


class QwenZh(AgentTemplate):
    def render(self, tools, system=None):
        d = _descriptions(tools)
        return (
            f"{system or ''}\n\n# 工具\n\n## 你拥有如下工具：\n\n"
            + _qwen_lines(d, chinese=True)
            + "\n\n## 你可以在回复中插入零次、一次或多次以下命令以调用工具：\n\n"
            f"✿FUNCTION✿: 工具名称，必须是[{_join_names(d)}]之一。\n"
            "✿ARGS✿: 工具输入\n"
            "✿RESULT✿: 工具结果\n"
            "✿RETURN✿: 根据工具结果进行回复，需将图片用![](url)渲染出来"
        )


class QwenEnParallel(AgentTemplate):
    def render(self, tools, system=None):
        d = _descriptions(tools)
        return (
            f"{system or ''}\n\n# Tools\n\n## You have access to the following tools:\n\n"
            + _qwen_lines(d, chinese=False)
            + "\n\n## Insert the following command in your reply when you need to call N tools in parallel:\n\n"
            f"✿FUNCTION✿: The name of tool 1, should be one of [{_join_names(d)}]\n"
            "✿ARGS✿: The input of tool 1\n"
            "✿FUNCTION✿: The name of tool 2\n"
            "✿ARGS✿: The input of tool 2\n"
            "...\n"
            "✿FUNCTION✿: The name of tool N\n"
            "✿ARGS✿: The input of tool N\n"
            "✿RESULT✿: The result of tool 1\n"
            "✿RESULT✿: The result of tool 2\n"
            "...\n"
            "✿RESULT✿: he result of tool N\n"  # sic: ms-swift's text, which models were trained on
            "✿RETURN✿: Reply based on tool results. Images need to be rendered as ![](url)"
        )


class QwenZhParallel(AgentTemplate):
    def render(self, tools, system=None):
        d = _descriptions(tools)
        return (
            f"{system or ''}\n\n# 工具\n\n## 你拥有如下工具：\n\n"
            + _qwen_lines(d, chinese=True)
            + "\n\n## 你可以在回复中插入以下命令以并行调用N个工具：\n\n"
            f"✿FUNCTION✿: 工具1的名称，必须是[{_join_names(d)}]之一\n"
            "✿ARGS✿: 工具1的输入\n"
            "✿FUNCTION✿: 工具2的名称\n"
            "✿ARGS✿: 工具2的输入\n"
            "...\n"
            "✿FUNCTION✿: 工具N的名称\n"
            "✿ARGS✿: 工具N的输入\n"
            "✿RESULT✿: 工具1的结果\n"
            "✿RESULT✿: 工具2的结果\n"
            "...\n"
            "✿RESULT✿: 工具N的结果\n"
            "✿RETURN✿: 根据工具结果进行回复，需将图片用![](url)渲染出来"
        )


#: ``--agent_template`` name -> template.
AGENT_TEMPLATES: dict[str, AgentTemplate] = {
    template.name: template
    for template in (
        ReactEn("react_en", REACT, replaces_system=True),
        ReactZh("react_zh", REACT, replaces_system=True),
        ReactGrpo("react_grpo", REACT, replaces_system=True),
        ToolBench("toolbench", REACT, replaces_system=True),
        Hermes("hermes", REACT, replaces_system=False),
        QwenEn("qwen_en", QWEN, replaces_system=False),
        QwenZh("qwen_zh", QWEN, replaces_system=False),
        QwenEnParallel("qwen_en_parallel", QWEN, replaces_system=False),
        QwenZhParallel("qwen_zh_parallel", QWEN, replaces_system=False),
    )
}

#: ms-swift 4.6's other agent templates: each reproduces one model family's chat template (its special tokens
#: included), which that model's tokenizer already holds; not built here.
NOT_BUILT = (
    "chatglm4", "deepseek_v3_1", "deepseek_v4", "gemma4", "glm4", "glm4_5", "glm4_7", "glm5_1", "hunyuan_hermes",
    "hy_v3", "hy_v3_preview", "kimi_k25", "kimi_k3", "llama3", "llama4", "minicpm5", "minimax_m2", "minimax_m3",
    "mistral", "qwen3_5", "qwen3_coder", "seed_oss", "youtu",
)


def allowed_names() -> str:
    return ", ".join(sorted(AGENT_TEMPLATES))


def get_agent_template(name: str) -> AgentTemplate:
    """The template called ``name``; a UserError (one sentence naming the allowed ones) otherwise."""
    if name in AGENT_TEMPLATES:
        return AGENT_TEMPLATES[name]
    if name in NOT_BUILT:
        raise UserError(f"--agent_template {name} is not built here (ms-swift's {name} reproduces one model family's "
                        f"own chat template); built: {allowed_names()}")
    raise UserError(f"--agent_template {name} is not an agent template; allowed: {allowed_names()}")
