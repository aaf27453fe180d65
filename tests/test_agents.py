"""--agent_template: ms-swift's agent templates (a row's tools written into its system prompt, tool calls read back
from a reply), the toolbench and react_format rewards, and the refusals around them.

The expected prompt texts are ms-swift's: EXPECTED was printed by ms-swift 4.6.0.dev0's own agent template
classes (swift/agent_template/, commit 3602360a) for TOOLS and the system prompt "Be brief.", and DOCUMENTED is
copied from its docs/source_en/Instruction/Agent-support.md (the system part of its encoded examples).
"""

from __future__ import annotations

import json
import logging

import pytest

from helpers import FAST, assert_clean_error, read_metrics, swift, swift_in_process

import msswift_examples  # scripts/msswift_examples.py (helpers puts scripts/ on the path)
from swift_cispo.agent_templates import AGENT_TEMPLATES, ToolCall, describe_tool, get_agent_template, read_tools
from swift_cispo.data import load_datasets
from swift_cispo.errors import UserError
from swift_cispo.rewards import orms, reward_function

# one bare function (xLAM's and ToolBench's form) and one in OpenAI's form
TOOLS = (
    '[{"name": "get_time", "description": "Current time in a time zone.", "parameters": {"tz": {"type": "str", "description": "IANA zone", "default": "UTC"}}}, {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]'
)

# fmt: off
EXPECTED = {
    "react_en": (
        "Answer the following questions as best you can. You have access to the following tools:\n"
        "\n"
        "get_time: Call this tool to interact with the get_time API. What is the get_time API useful for? Current time in a time zone. Parameters: {\"tz\": {\"type\": \"str\", \"description\": \"IANA zone\", \"default\": \"UTC\"}} Format the arguments as a JSON object.\n"
        "\n"
        "add: Call this tool to interact with the add API. What is the add API useful for? Add two integers. Parameters: {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]} Format the arguments as a JSON object.\n"
        "\n"
        "Use the following format:\n"
        "\n"
        "Question: the input question you must answer\n"
        "Thought: you should always think about what to do\n"
        "Action: the action to take, should be one of [get_time,add]\n"
        "Action Input: the input to the action\n"
        "Observation: the result of the action\n"
        "... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n"
        "Thought: I now know the final answer\n"
        "Final Answer: the final answer to the original input question\n"
        "\n"
        "Begin!\n"
    ),
    "react_zh": (
        "尽可能地回答以下问题。你可以使用以下工具:\n"
        "\n"
        "get_time: 调用此工具与 get_time API 进行交互。get_time 有什么用？Current time in a time zone. 输入参数：{\"tz\": {\"type\": \"str\", \"description\": \"IANA zone\", \"default\": \"UTC\"}} 此工具的输入应为JSON对象。\n"
        "\n"
        "add: 调用此工具与 add API 进行交互。add 有什么用？Add two integers. 输入参数：{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]} 此工具的输入应为JSON对象。\n"
        "\n"
        "请按照以下格式进行:\n"
        "\n"
        "Question: 需要你回答的输入问题\n"
        "Thought: 你应该总是思考该做什么\n"
        "Action: 需要使用的工具，应该是[get_time,add]中的一个\n"
        "Action Input: 传入工具的内容\n"
        "Observation: 行动的结果\n"
        "... (这个Thought/Action/Action Input/Observation可以重复N次)\n"
        "Thought: 我现在知道最后的答案\n"
        "Final Answer: 对原始输入问题的最终答案\n"
        "\n"
        "现在开始！\n"
    ),
    "react_grpo": (
        "A conversation for tool calling between User and Assistant. The user asks a question which may be solved by calling tools, and the Assistant solves it. The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning process should be enclosed within <think> </think>tags and answer should follow the ReACT format(Action:xxx\n"
        "Action Input:xxx), i.e., <think> reasoning process here </think> Action: action here\n"
        "Action Input: parameters here\n"
        "\n"
        "Answer the following questions as best as you can. You have access to the following tools:\n"
        "\n"
        "get_time: Call this tool to interact with the get_time API. What is the get_time API useful for? Current time in a time zone. Parameters: {\"tz\": {\"type\": \"str\", \"description\": \"IANA zone\", \"default\": \"UTC\"}} Format the arguments as a JSON object.\n"
        "\n"
        "add: Call this tool to interact with the add API. What is the add API useful for? Add two integers. Parameters: {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]} Format the arguments as a JSON object.\n"
        "\n"
        "Use the following format:\n"
        "\n"
        "<think>you should always think about what to do</think>\n"
        "Action: the action to take, should be one of [get_time,add]\n"
        "Action Input: the input to the action\n"
        "Observation: the result of the action, given by the actual calling\n"
        "... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n"
        "Final Answer: the final answer to the original input question\n"
        "\n"
        "Begin!\n"
    ),
    "toolbench": (
        "You can use many tools(functions) to do the following task.\n"
        "First I will give you the task description, and your task start.\n"
        "At each step, you need to give your thought to analyze the status now and what to do next, with a function call to actually execute your step. Your output should follow this format:\n"
        "Thought:\n"
        "Action:\n"
        "Action Input:\n"
        "\n"
        "After the call, you will get the call result, and you are now in a new state.\n"
        "Then you will analyze your status now, then decide what to do next...\n"
        "After many (Thought-call) pairs, you finally perform the task, then you can give your final answer.\n"
        "Remember:\n"
        "1.the state change is irreversible, you can't go back to one of the former state, if you want to restart the task, say \"I give up and restart\".\n"
        "2.All the thought is short, at most in 5 sentence.\n"
        "3.You can do more then one try, so if your plan is to continuously try some conditions, you can do one of the conditions per try.\n"
        "Let's Begin!\n"
        "Task description: You should use functions to help handle the real time user queries. Remember:\n"
        "1.ALWAYS call \"Finish\" function at the end of the task. And the final answer should contain enough information to show to the user,If you can't handle the task, or you find that function calls always fail(the function is not valid now), use function Finish->give_up_and_restart.\n"
        "2.Do not use origin tool names, use only subfunctions' names.\n"
        "Specifically, you have access to the following APIs: [{\"name\": \"get_time\", \"description\": \"Current time in a time zone.\", \"parameters\": {\"tz\": {\"type\": \"str\", \"description\": \"IANA zone\", \"default\": \"UTC\"}}}, {\"name\": \"add\", \"description\": \"Add two integers.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]}}]"
    ),
    "hermes": (
        "Be brief.\n"
        "\n"
        "# Tools\n"
        "\n"
        "You may call one or more functions to assist with the user query.\n"
        "\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n"
        "{\"type\": \"function\", \"function\": {\"name\": \"get_time\", \"description\": \"Current time in a time zone.\", \"parameters\": {\"tz\": {\"type\": \"str\", \"description\": \"IANA zone\", \"default\": \"UTC\"}}}}\n"
        "{\"type\": \"function\", \"function\": {\"name\": \"add\", \"description\": \"Add two integers.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]}}}\n"
        "</tools>\n"
        "\n"
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
        "</tool_call>"
    ),
    "qwen_en": (
        "Be brief.\n"
        "\n"
        "# Tools\n"
        "\n"
        "## You have access to the following tools:\n"
        "\n"
        "### get_time\n"
        "\n"
        "get_time: Current time in a time zone. Parameters: {\"tz\": {\"type\": \"str\", \"description\": \"IANA zone\", \"default\": \"UTC\"}} Format the arguments as a JSON object.\n"
        "\n"
        "### add\n"
        "\n"
        "add: Add two integers. Parameters: {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]} Format the arguments as a JSON object.\n"
        "\n"
        "## When you need to call a tool, please insert the following command in your reply, which can be called zero or multiple times according to your needs:\n"
        "\n"
        "✿FUNCTION✿: The tool to use, should be one of [get_time,add]\n"
        "✿ARGS✿: The input of the tool\n"
        "✿RESULT✿: Tool results\n"
        "✿RETURN✿: Reply based on tool results. Images need to be rendered as ![](url)"
    ),
    "qwen_zh": (
        "Be brief.\n"
        "\n"
        "# 工具\n"
        "\n"
        "## 你拥有如下工具：\n"
        "\n"
        "### get_time\n"
        "\n"
        "get_time: Current time in a time zone. 输入参数：{\"tz\": {\"type\": \"str\", \"description\": \"IANA zone\", \"default\": \"UTC\"}} 此工具的输入应为JSON对象。\n"
        "\n"
        "### add\n"
        "\n"
        "add: Add two integers. 输入参数：{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]} 此工具的输入应为JSON对象。\n"
        "\n"
        "## 你可以在回复中插入零次、一次或多次以下命令以调用工具：\n"
        "\n"
        "✿FUNCTION✿: 工具名称，必须是[get_time,add]之一。\n"
        "✿ARGS✿: 工具输入\n"
        "✿RESULT✿: 工具结果\n"
        "✿RETURN✿: 根据工具结果进行回复，需将图片用![](url)渲染出来"
    ),
    "qwen_en_parallel": (
        "Be brief.\n"
        "\n"
        "# Tools\n"
        "\n"
        "## You have access to the following tools:\n"
        "\n"
        "### get_time\n"
        "\n"
        "get_time: Current time in a time zone. Parameters: {\"tz\": {\"type\": \"str\", \"description\": \"IANA zone\", \"default\": \"UTC\"}} Format the arguments as a JSON object.\n"
        "\n"
        "### add\n"
        "\n"
        "add: Add two integers. Parameters: {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]} Format the arguments as a JSON object.\n"
        "\n"
        "## Insert the following command in your reply when you need to call N tools in parallel:\n"
        "\n"
        "✿FUNCTION✿: The name of tool 1, should be one of [get_time,add]\n"
        "✿ARGS✿: The input of tool 1\n"
        "✿FUNCTION✿: The name of tool 2\n"
        "✿ARGS✿: The input of tool 2\n"
        "...\n"
        "✿FUNCTION✿: The name of tool N\n"
        "✿ARGS✿: The input of tool N\n"
        "✿RESULT✿: The result of tool 1\n"
        "✿RESULT✿: The result of tool 2\n"
        "...\n"
        "✿RESULT✿: he result of tool N\n"
        "✿RETURN✿: Reply based on tool results. Images need to be rendered as ![](url)"
    ),
    "qwen_zh_parallel": (
        "Be brief.\n"
        "\n"
        "# 工具\n"
        "\n"
        "## 你拥有如下工具：\n"
        "\n"
        "### get_time\n"
        "\n"
        "get_time: Current time in a time zone. 输入参数：{\"tz\": {\"type\": \"str\", \"description\": \"IANA zone\", \"default\": \"UTC\"}} 此工具的输入应为JSON对象。\n"
        "\n"
        "### add\n"
        "\n"
        "add: Add two integers. 输入参数：{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"integer\"}}, \"required\": [\"a\", \"b\"]} 此工具的输入应为JSON对象。\n"
        "\n"
        "## 你可以在回复中插入以下命令以并行调用N个工具：\n"
        "\n"
        "✿FUNCTION✿: 工具1的名称，必须是[get_time,add]之一\n"
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
    ),
}
# fmt: on

REALTIME_AQI = json.dumps([{"type": "function", "function": {
    "name": "realtime_aqi",
    "description": "Weather forecast. Get real-time air quality, including current air quality, PM2.5, and PM10 information.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g., Shanghai"}}, "required": ["city"]},
}}])  # fmt: skip

# fmt: off
DOCUMENTED = {
    "hermes": (  # with qwen2_5's default system prompt, which ms-swift's template puts first
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n"
        "\n"
        "# Tools\n"
        "\n"
        "You may call one or more functions to assist with the user query.\n"
        "\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n"
        "{\"type\": \"function\", \"function\": {\"name\": \"realtime_aqi\", \"description\": \"Weather forecast. Get real-time air quality, including current air quality, PM2.5, and PM10 information.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"City name, e.g., Shanghai\"}}, \"required\": [\"city\"]}}}\n"
        "</tools>\n"
        "\n"
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
        "</tool_call>"
    ),
    "react_en": (
        "Answer the following questions as best you can. You have access to the following tools:\n"
        "\n"
        "realtime_aqi: Call this tool to interact with the realtime_aqi API. What is the realtime_aqi API useful for? Weather forecast. Get real-time air quality, including current air quality, PM2.5, and PM10 information. Parameters: {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"City name, e.g., Shanghai\"}}, \"required\": [\"city\"]} Format the arguments as a JSON object.\n"
        "\n"
        "Use the following format:\n"
        "\n"
        "Question: the input question you must answer\n"
        "Thought: you should always think about what to do\n"
        "Action: the action to take, should be one of [realtime_aqi]\n"
        "Action Input: the input to the action\n"
        "Observation: the result of the action\n"
        "... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n"
        "Thought: I now know the final answer\n"
        "Final Answer: the final answer to the original input question\n"
        "\n"
        "Begin!\n"
    ),
}
# fmt: on


# --------------------------------------------------------------------------- tools into the system prompt
def test_every_template_is_checked():
    assert sorted(EXPECTED) == sorted(AGENT_TEMPLATES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_template_writes_ms_swift_text(name):
    """react_*, react_grpo and toolbench put the tools text in place of "Be brief."; hermes and qwen_* after it."""
    assert AGENT_TEMPLATES[name].render(read_tools(TOOLS), "Be brief.") == EXPECTED[name]


@pytest.mark.parametrize("name, system", [("hermes", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."), ("react_en", None)])
def test_the_encodings_ms_swift_documents(name, system):
    assert AGENT_TEMPLATES[name].render(read_tools(REALTIME_AQI), system) == DOCUMENTED[name]


def test_without_a_system_prompt_hermes_and_qwen_start_with_the_tools():
    """ms-swift writes its model template's default system prompt there; none is known here, so none is written."""
    tools = read_tools(TOOLS)
    assert AGENT_TEMPLATES["hermes"].render(tools) == EXPECTED["hermes"].removeprefix("Be brief.")
    assert AGENT_TEMPLATES["qwen_en"].render(tools, None) == EXPECTED["qwen_en"].removeprefix("Be brief.")


WRAPPED = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"x": 1}}}


@pytest.mark.parametrize("cell", [
    '[{"name": "f", "description": "d", "parameters": {"x": 1}}]',  # a JSON list of bare functions (xLAM)
    '{"name": "f", "description": "d", "parameters": {"x": 1}}',  # one tool, not in a list
    "[{'name': 'f', 'description': 'd', 'parameters': {'x': 1}}]",  # str() of a Python list
    [{"name": "f", "description": "d", "parameters": {"x": 1}}],  # a list cell (parquet, JSONL objects)
    ['{"name": "f", "description": "d", "parameters": {"x": 1}}'],  # a list of JSON strings
    [WRAPPED],  # OpenAI's form, kept as it is
])  # fmt: skip
def test_tools_cells_ms_swift_accepts(cell):
    assert read_tools(cell) == [WRAPPED]


@pytest.mark.parametrize("cell", [None, "", "  ", "[]", []])
def test_an_empty_tools_cell_is_no_tools(cell):
    assert read_tools(cell) == []


@pytest.mark.parametrize("cell, reason", [
    ("[{'name': ", "is not JSON (nor a Python literal): \"[{'name': \""),
    (5, "is of type int, not a JSON string or a list of tool objects"),
    ('["add"]', "holds tool 1 of type str, not a tool object"),
    ('[{"name": "f", "description": "d"}, 3]', "holds tool 2 of type int, not a tool object"),
    (["{oops"], "is not JSON (nor a Python literal): '{oops'"),
])  # fmt: skip
def test_malformed_tools_cells_say_why(cell, reason):
    with pytest.raises(ValueError) as err:
        read_tools(cell)
    assert str(err.value) == reason


def test_a_written_tool_needs_a_name_and_a_description():
    assert describe_tool({"name_for_model": "m", "description_for_model": "d", "name_for_human": "M"}, 1).human_name == "M"
    with pytest.raises(ValueError, match=r"^tool 2 has no 'name' \(a string\)$"):
        describe_tool({"description": "d"}, 2)
    with pytest.raises(ValueError, match=r"^tool 1 \(f\) has no 'description'$"):
        describe_tool({"name": "f", "parameters": {}}, 1)
    with pytest.raises(ValueError, match=r"^tool 1's 'function' is a str, not an object$"):
        describe_tool({"type": "function", "function": "f"}, 1)


@pytest.mark.parametrize("name, sentence", [
    ("nope", "--agent_template nope is not an agent template; allowed: hermes, qwen_en, qwen_en_parallel, qwen_zh, "
             "qwen_zh_parallel, react_en, react_grpo, react_zh, toolbench"),
    ("glm4", "--agent_template glm4 is not built here (ms-swift's glm4 reproduces one model family's own chat template); "
             "built: hermes, qwen_en, qwen_en_parallel, qwen_zh, qwen_zh_parallel, react_en, react_grpo, react_zh, toolbench"),
])  # fmt: skip
def test_an_unknown_template_is_one_sentence_naming_the_allowed(name, sentence):
    with pytest.raises(UserError) as err:
        get_agent_template(name)
    assert str(err.value) == sentence


# --------------------------------------------------------------------------- tool calls read back
CALLS = [ToolCall("add", '{"a": 1, "b": 2}'), ToolCall("get_time", '{"tz": "Europe/Oslo"}')]
WRITTEN = {
    "react_en": 'Action: add\nAction Input: {"a": 1, "b": 2}\nAction: get_time\nAction Input: {"tz": "Europe/Oslo"}\nObservation:',
    "qwen_en": '✿FUNCTION✿: add\n✿ARGS✿: {"a": 1, "b": 2}\n✿FUNCTION✿: get_time\n✿ARGS✿: {"tz": "Europe/Oslo"}\n✿RESULT✿:',
    "hermes": '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Oslo"}}\n</tool_call>',
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(AGENT_TEMPLATES))
def test_calls_written_by_a_template_are_read_back(name):
    template = AGENT_TEMPLATES[name]
    text = template.format_tool_calls(CALLS)
    family = "hermes" if name == "hermes" else "qwen_en" if name.startswith("qwen") else "react_en"
    assert text == WRITTEN[family]
    assert template.parse_tool_calls(text) == CALLS


@pytest.mark.parametrize("name, reply, calls", [
    # a react_grpo reply as vLLM returns it with --stop_words Observation:
    ("react_grpo", '<think>sum them</think>\nAction: add\nAction Input: {"a": 1, "b": 2}\nObservation:', [("add", '{"a": 1, "b": 2}')]),
    ("hermes", '<tool_call>\n{"name": " add ", "arguments": "{\\"a\\": 1}"}\n</tool_call>', [("add", '{"a": 1}')]),  # arguments as a string
    ("hermes", "<tool_call>{'name': 'add', 'arguments': {'a': 1}}</tool_call>", [("add", '{"a": 1}')]),  # a Python literal
    ("hermes", '<tool_call>oops</tool_call>\nAction: add\nAction Input: {}', [("add", "{}")]),  # ReAct understood by every template
    ("qwen_en", 'Action: add\nAction Input: {"a": 1}', [("add", '{"a": 1}')]),
    ("react_en", "Action: a\nAction: b\nAction Input: 1", [("a", "1")]),  # ms-swift's reading: a second action does not replace the first
])  # fmt: skip
def test_calls_in_replies(name, reply, calls):
    assert AGENT_TEMPLATES[name].parse_tool_calls(reply) == [ToolCall(*call) for call in calls]


@pytest.mark.parametrize("name, reply", [
    ("react_en", "Action: add"),  # no input
    ("react_en", 'Action Input: {"a": 1}'),  # no action
    ("react_en", "no call at all"),
    ("qwen_en", "✿FUNCTION✿: add\n✿RESULT✿: 3"),
    ("hermes", "<tool_call>not json</tool_call>"),
    ("hermes", '<tool_call>{"name": "add"}</tool_call>'),  # no arguments
    ("hermes", '<tool_call>{"name": 3, "arguments": {}}</tool_call>'),  # a name that is not a string
    ("hermes", '<tool_call>["add", {}]</tool_call>'),  # not an object
    ("hermes", '<tool_call>{"name": "add", "arguments": {}}'),  # not closed
])  # fmt: skip
def test_malformed_calls_are_not_calls(name, reply):
    assert AGENT_TEMPLATES[name].parse_tool_calls(reply) == []


# --------------------------------------------------------------------------- rewards
SOLUTION = 'Action: add\nAction Input: {"a": 1, "b": 2}'


@pytest.mark.parametrize("completion, expected", [
    (SOLUTION, 1.0),
    ('<think>sum</think>\nAction: add\nAction Input: {"b": 2, "a": 1}\nObservation:', 1.0),  # key order; the stop word
    ('Action: add\nAction Input: {"a": 1.0, "b": 2}', 1.0),  # equal JSON numbers
    ([{"role": "assistant", "content": SOLUTION}], 1.0),  # a conversational completion
    ('Action: add\nAction Input: {"a": 1}', 0.0),  # a key missing
    ('Action: add\nAction Input: {"a": 1, "b": 2, "c": 3}', 0.0),  # a key too many
    ('Action: add\nAction Input: {"a": 1, "b": 3}', 0.0),  # a wrong value
    ('Action: sub\nAction Input: {"a": 1, "b": 2}', 0.0),  # another tool
    ("Action: add\nAction Input: {a: 1, b: 2}", 0.0),  # not JSON
    ('Action: add\nAction Input: {"a": 1, "b": 2}\nThought: done', 0.0),  # text after the JSON
    ('Action: add\nAction Input: {"a": 1, "b": 2}\nObservation:<|im_end|>', 0.0),  # ms-swift cuts the stop word before the token
    ("no call at all", 0.0),
    ("", 0.0),
])  # fmt: skip
def test_toolbench_scores_the_call_against_the_solution(completion, expected):
    assert orms["toolbench"]()([completion], solution=[SOLUTION]) == [expected]


def test_toolbench_edge_cases_as_in_ms_swift():
    toolbench = orms["toolbench"]()
    # no Action Input reads as {} (ms-swift's default), which matches a call without arguments
    assert toolbench(["Action: now", "Action: now\nAction Input: {}", 'Action: now\nAction Input: {"x": 1}'],
                     solution=["Action: now\nAction Input: {}"] * 3) == [1.0, 1.0, 0.0]  # fmt: skip
    # plain-text inputs are compared by ROUGE-L in ms-swift against thresholds no score reaches: never a match
    assert toolbench(["Action: search\nAction Input: weather in Oslo"], solution=["Action: search\nAction Input: weather in Oslo"]) == [0.0]
    # JSON that is not an object (a list) never matches
    assert toolbench(["Action: add\nAction Input: [1, 2]"], solution=["Action: add\nAction Input: [1, 2]"]) == [0.0]
    with pytest.raises(UserError, match=r"^the toolbench reward needs a 'solution' column in the dataset"):
        toolbench(["Action: now"])


@pytest.mark.parametrize("completion, expected", [
    ('<think>sum</think>\nAction: add\nAction Input: {"a": 1}', 1.0),
    ("<think>sum</think>\n\nAction: add\nAction Input: {}\nObservation:", 1.0),
    ("<think></think>Action:Action Input:", 1.0),
    ([{"role": "assistant", "content": "<think>x</think> Action: a Action Input: {}"}], 1.0),
    (" <think>sum</think>\nAction: add\nAction Input: {}", 0.0),  # must start with <think>
    ("<think>sum</think> so Action: add\nAction Input: {}", 0.0),  # text between </think> and Action:
    ("Action: add\nAction Input: {}", 0.0),  # no reasoning
    ("<think>sum</think>\nAction: add", 0.0),  # no input
    ("<think>sum\nAction: add\nAction Input: {}", 0.0),  # reasoning not closed
    ("", 0.0),
])  # fmt: skip
def test_react_format(completion, expected):
    assert orms["react_format"]()([completion]) == [expected]


def test_agent_rewards_are_selectable_by_name():
    assert reward_function("toolbench")(completions=[SOLUTION, "x"], solution=[SOLUTION, SOLUTION]) == [1.0, 0.0]
    assert reward_function("react_format")(completions=["<think>a</think>Action: b\nAction Input: {}"]) == [1.0]


# --------------------------------------------------------------------------- datasets
def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_xlam_rows_get_their_tools_in_the_system_prompt(tmp_path):
    """The stand-in for ms-swift's xlam-function-calling-60k:grpo, as agent.sh trains on it."""
    rows = msswift_examples.xlam_rows()
    data = load_datasets([write_rows(tmp_path / "xlam.jsonl", rows)], agent_template="react_grpo")
    assert data.column_names == ["solution", "tools", "prompt"]  # solution and tools reach the rewards
    system, user = data["prompt"][0]
    assert system == {"role": "system", "content": AGENT_TEMPLATES["react_grpo"].render(read_tools(rows[0]["tools"]))}
    assert system["content"].startswith("A conversation for tool calling between User and Assistant.")
    assert "add: Call this tool to interact with the add API. What is the add API useful for? Add two integers." in system["content"]
    assert user == {"role": "user", "content": "What is 0 plus 1?"}  # the reference reply is not in the prompt
    assert data["solution"][0] == 'Action: add\nAction Input: {"a": 0, "b": 1}'


def test_hermes_keeps_the_system_prompt_and_react_replaces_it_saying_so(tmp_path, caplog):
    path = write_rows(tmp_path / "d.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "time?"}], "tools": TOOLS},
        {"messages": [{"role": "user", "content": "sum?"}], "tools": TOOLS},
    ])  # fmt: skip
    caplog.set_level(logging.WARNING, logger="swift_cispo")
    logging.getLogger("swift_cispo").propagate = True
    hermes = load_datasets([path], agent_template="hermes")["prompt"]
    assert hermes[0] == [{"role": "system", "content": EXPECTED["hermes"]}, {"role": "user", "content": "time?"}]
    assert hermes[1][0]["content"] == EXPECTED["hermes"].removeprefix("Be brief.")
    assert "system prompt" not in caplog.text
    react = load_datasets([path], agent_template="react_en")["prompt"]
    assert react[0] == [{"role": "system", "content": EXPECTED["react_en"]}, {"role": "user", "content": "time?"}]
    assert "--agent_template react_en writes the tools in place of the system prompt (as in ms-swift), so the system prompt of 1 rows" in caplog.text
    with_flag = load_datasets([path], agent_template="qwen_en", system="Be brief.")["prompt"]  # --system
    assert with_flag[1][0]["content"] == EXPECTED["qwen_en"]


def test_rows_without_tools_in_a_tools_column(tmp_path):
    """With a template every prompt is a conversation (one column, one kind of prompt); without one, and no
    row with tools, nothing changes."""
    path = write_rows(tmp_path / "d.jsonl", [{"prompt": "sum?", "tools": TOOLS}, {"prompt": "hi", "tools": ""}, {"prompt": "yo", "tools": "[]"}])
    prompts = load_datasets([path], agent_template="toolbench")["prompt"]
    assert prompts[0][0]["content"] == EXPECTED["toolbench"] and prompts[0][1] == {"role": "user", "content": "sum?"}
    assert prompts[1:] == [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    empty = write_rows(tmp_path / "e.jsonl", [{"prompt": "hi", "tools": ""}, {"prompt": "yo", "tools": "[]"}])
    assert load_datasets([empty])["prompt"] == ["hi", "yo"]


def test_a_dataset_without_tools_is_left_as_it_is_saying_so(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="swift_cispo")
    logging.getLogger("swift_cispo").propagate = True
    path = write_rows(tmp_path / "plain.jsonl", [{"prompt": "1+1=", "solution": "2"}])
    assert load_datasets([path], agent_template="hermes")["prompt"] == ["1+1="]
    assert "has no 'tools' column, so --agent_template hermes changes none of its prompts" in caplog.text


@pytest.mark.parametrize("rows, template, sentence", [
    ([{"prompt": "a", "tools": ""}, {"prompt": "b", "tools": TOOLS}], None,
     "row 2 has a 'tools' list but no --agent_template says how to write it into the prompt; give --agent_template "
     "(one of hermes, qwen_en, qwen_en_parallel, qwen_zh, qwen_zh_parallel, react_en, react_grpo, react_zh, toolbench; "
     "ms-swift's default for Qwen models is hermes)"),
    ([{"prompt": "a", "tools": TOOLS}, {"prompt": "b", "tools": "[{'name': "}], "hermes",
     "row 2: the 'tools' cell is not JSON (nor a Python literal): \"[{'name': \"; give a JSON list of tools, each "
     '{"name", "description", "parameters"} or {"type": "function", "function": {...}}'),
    ([{"prompt": "a", "tools": '[{"name": "f"}]'}], "react_en",
     "row 1: in the 'tools' cell, tool 1 (f) has no 'description' (--agent_template react_en writes each tool's name and description)"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "tool_call", "content": "{}"}, {"role": "tool", "content": "1"},
                    {"role": "user", "content": "b"}], "tools": TOOLS}], "hermes",
     "row 1 has tool messages (tool, tool_call) in its prompt; agent histories (tool calls and results in the prompt) "
     "are not built yet: give the prompt as system, user and assistant messages"),
])  # fmt: skip
def test_bad_tools_rows_are_one_sentence_naming_the_row(tmp_path, rows, template, sentence):
    path = write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(UserError) as err:
        load_datasets([path], agent_template=template)
    assert str(err.value) == f"dataset {path} {sentence}"


# --------------------------------------------------------------------------- the command line
@pytest.fixture
def swift_here(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    return lambda *args: swift_in_process(*args, capsys=capsys)


@pytest.mark.parametrize("extra, rows, fragment", [
    (["--agent_template", "react"], None, "--agent_template react is not an agent template; allowed: hermes, qwen_en"),
    (["--agent_template", "llama3"], None, "--agent_template llama3 is not built here"),
    (["--agent_template", "hermes"], [{"prompt": "a", "solution": "b", "tools": '{"name": "f", '}], "row 1: the 'tools' cell is not JSON"),
    ([], [{"prompt": "a", "solution": "b", "tools": TOOLS}], "row 1 has a 'tools' list but no --agent_template says how"),
])  # fmt: skip
def test_refusals_on_the_command_line(swift_here, tmp_path, tiny_model_dir, extra, rows, fragment):
    data = write_rows(tmp_path / "d.jsonl", rows or [{"prompt": "1+1=", "solution": "2"}])
    result = swift_here("rlhf", "--model", tiny_model_dir, "--dataset", data, "--reward_funcs", "toolbench",
                        "--output_dir", tmp_path / "never", *extra)  # fmt: skip
    assert_clean_error(result, fragment)  # exit 2, one error line, no traceback
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_an_agent_dataset_trains_with_both_agent_rewards(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "xlam.jsonl", msswift_examples.xlam_rows())
    out = tmp_path / "run"
    result = swift("rlhf", "--model", tiny_model_dir, "--dataset", data, "--agent_template", "react_grpo",
                   "--reward_funcs", "toolbench", "react_format", "--output_dir", out, *FAST, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trained = [m for m in read_metrics(out) if "loss" in m]
    assert [m["step"] for m in trained] == [1, 2]
    assert all("rewards/toolbench/mean" in m and "rewards/react_format/mean" in m for m in trained)
