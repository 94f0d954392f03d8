"""The step API every world model offers: start / step / features / select, imagine as a
loop over step, the sliding context window, and clear errors that leave states intact."""
import copy
from dataclasses import replace

import pytest
import torch

import world_models
from envs import task_index

MODELS = ("dreamer4", "whale")


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    m = world_models.make(request.param, "tiny", tasks=("toy-reach", "reacher-easy"))
    for p in m.parameters():  # zero-initialised heads would hide what reads what
        if p.dim() > 1 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1)
    return m.eval()


def context(b=1, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, 16, 16), generator=g, dtype=torch.uint8), torch.rand(b, t - 1, 2, generator=g) * 2 - 1


def gen(seed=3):
    return torch.Generator().manual_seed(seed)


def test_imagine_is_the_step_loop(model):
    obs, ctx = context()
    plans = torch.rand(4, 6, 2, generator=gen(1)) * 2 - 1
    signal = model.native_signals
    im = model.imagine(obs, plans, context_actions=ctx, seeds=2, signals=signal, generator=gen(), decode=True)
    state = model.start(obs, ctx, seeds=2, generator=gen()).select(torch.zeros(4, dtype=torch.long))
    for h in range(6):
        state, out = model.step(state, plans[:, h], signals=signal, decode=True)
        torch.testing.assert_close(im.latents[:, h], out.latent)
        torch.testing.assert_close(im.seed_latents[:, :, h], out.seed_latents)
        torch.testing.assert_close(im.rewards[:, h], out.reward)
        torch.testing.assert_close(im.features[:, h], out.features)
        torch.testing.assert_close(im.frames[:, h], out.frame)
        torch.testing.assert_close(im.signals[signal[0]][:, h], out.signals[signal[0]])


@pytest.mark.parametrize("frames", [3, 4])
def test_cached_window_equals_recomputing_it_past_the_window(model, frames):
    # 3 context frames and 12 steps slide a 4-frame window several times; with 4 the window
    # is full when the rows are selected, so the first slide restarts the shared past once on
    # the row they came from. The two states are stepped in lockstep; after each step the
    # uncached one takes the cached one's sampled frame, so a near-tie in sampling cannot
    # make them diverge, and every step compares the same computation done both ways.
    obs, ctx = context(t=frames)
    plans = torch.rand(2, 12, 2, generator=gen(1)) * 2 - 1
    one = lambda s: s.select(torch.zeros(2, dtype=torch.long))  # noqa: E731
    a = one(model.start(obs, ctx, generator=gen(), max_context=4))
    b = one(model.start(obs, ctx, generator=gen(), cached=False, max_context=4))
    for h in range(12):
        a, out_a = model.step(a, plans[:, h], signals=model.native_signals)
        b, out_b = model.step(b, plans[:, h], signals=model.native_signals)
        for key in ("reward", "features"):
            torch.testing.assert_close(getattr(out_a, key), getattr(out_b, key), atol=1e-4, rtol=1e-4)
        name = model.native_signals[0]
        torch.testing.assert_close(out_a.signals[name], out_b.signals[name], atol=1e-4, rtol=1e-4)
        if model.name == "dreamer4":  # the window holds the committed frames: share a's
            b = replace(b, window=b.window._with(a.window.tokens, None))
        else:  # the next input is the sampled frame, and the behaviour history holds it too
            b = replace(b, current=a.current, z=a.z, behavior=b.behavior._with(a.behavior.tokens, None))
        assert a.window.length <= 4


def test_features_of_real_frames_match_imagined_ones(model):
    obs, ctx = context(b=3)
    real = model.features(obs, ctx, task="toy-reach")
    state, out = model.step(model.start(obs, ctx), torch.zeros(3, 2))
    assert real.shape == out.features.shape == (3, model.feature_dim)
    assert real.dtype == out.features.dtype == torch.float32
    torch.testing.assert_close(real, model.start(obs, ctx).features)
    # the features read the frames: another last frame gives other features
    other = obs.clone()
    other[:, -1] = 255 - other[:, -1]
    assert (model.features(other, ctx) - real).abs().max() > 1e-3


def test_states_branch_select_and_are_never_changed_in_place(model):
    obs, ctx = context(b=3)
    state = model.start(obs, ctx, generator=gen())
    picked = state.select(torch.tensor([2, 0, 2]))
    torch.testing.assert_close(picked.features, state.features[[2, 0, 2]])
    wide = state.select(torch.zeros(5, dtype=torch.long))
    assert wide.batch == 5 and wide.features.shape[0] == 5
    before = state.features.clone()
    actions = torch.rand(3, 2, generator=gen(2)) * 2 - 1
    state.generator.manual_seed(5)
    _, first = model.step(state, actions)
    state.generator.manual_seed(5)
    _, again = model.step(state, actions)  # the same start, stepped twice
    torch.testing.assert_close(first.latent, again.latent)
    torch.testing.assert_close(state.features, before)


def test_policy_rollout_reads_features_and_its_actions_are_recorded(model):
    obs, _ = context(b=2, t=1)
    seen = []

    def policy(features):
        seen.append(features)
        return torch.tanh(features[:, :2])

    im = model.imagine(obs[:, 0], policy, horizon=3, generator=gen())
    assert len(seen) == 3 and seen[0].shape == (2, im.features.shape[-1])
    torch.testing.assert_close(im.actions[:, 1], torch.tanh(im.features[:, 0, :2]))


def test_bad_input_is_one_value_error_and_changes_nothing(model):
    obs, ctx = context(b=2)
    state = model.start(obs, ctx, generator=gen())
    before = state.features.clone()
    bad = {"wrong shape": torch.zeros(2, 3), "batch": torch.zeros(3, 2), "nan": torch.full((2, 2), float("nan")),
           "3-d": torch.zeros(2, 1, 2)}
    for name, actions in bad.items():
        with pytest.raises(ValueError):
            model.step(state, actions)
    other = world_models.make(model.name, "tiny", tasks=("toy-reach", "reacher-easy")).eval()
    with pytest.raises(ValueError, match="not made by this"):
        other.step(state, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="policy must return"):
        model.imagine(obs, lambda f: torch.zeros(2, 3), context_actions=ctx, horizon=2)
    with pytest.raises(ValueError, match="horizon"):
        model.imagine(obs, lambda f: torch.zeros(2, 2), context_actions=ctx)
    with pytest.raises(ValueError, match="trained on"):
        model.start(obs, ctx, task="cup-catch")
    with pytest.raises(ValueError, match="index out of range"):
        state.select(torch.tensor([5]))
    torch.testing.assert_close(state.features, before)
    model.step(state, torch.zeros(2, 2))  # still usable


def test_window_stays_within_max_context(model):
    obs, ctx = context(t=3)
    assert model.max_context == model.cfg.max_context
    state = model.start(obs, ctx)
    lengths = []
    for _ in range(2 * model.max_context + 3):
        state, _ = model.step(state, torch.zeros(1, 2))
        lengths.append(state.window.length)
    assert max(lengths) == model.max_context and min(lengths[model.max_context:]) >= model.max_context // 2
    short = model.start(obs, ctx, max_context=2)
    assert short.window.length == (2 if model.name == "dreamer4" else 1)  # whale: the current frame waits for its action


def test_task_rows_come_from_the_models_own_task_list(model):
    assert model.task_row("reacher-easy") == 1 and model.task_row(None) == 0
    rows = model.batch_task_rows(torch.tensor([task_index("reacher-easy"), task_index("toy-reach")]))
    assert rows.tolist() == [1, 0]
    with pytest.raises(ValueError, match="trained on"):
        model.batch_task_rows(torch.tensor([task_index("cup-catch")]))


def test_a_model_without_a_reward_head_says_so():
    no_heads = dict(reward_head=False, bc_head=False, context_rows=0.0)
    for name, options in (("dreamer4", no_heads), ("whale", dict(reward_head=False))):
        m = world_models.make(name, "tiny").eval()
        bare = world_models.make(name, "tiny", **options).eval()
        obs, _ = context(t=1)
        assert m.has_reward and not bare.has_reward
        _, out = bare.step(bare.start(obs), torch.zeros(1, 2))
        assert out.reward is None
        assert bare.imagine(obs, torch.zeros(1, 2, 2)).rewards is None


def test_compiled_transformers_imagine_what_the_eager_ones_do(model):
    # dynamo's own "eager" backend: the capture, guards and recompiles of a real compile,
    # without the minutes of code generation (benchmarks/planner_speed.py --compile times that)
    from torch._dynamo.utils import counters

    if model.name != "dreamer4":
        pytest.skip("one family is enough: both run the same SpaceTimeStack, and tracing takes 30 s")
    counters.clear()
    compiled = world_models.compile_transformers(copy.deepcopy(model), backend="eager")
    obs, ctx = context(t=2)
    plans = torch.rand(3, 3, 2, generator=gen(2)) * 2 - 1  # a 2-frame window slides once
    runs = [m.imagine(obs, plans, context_actions=ctx, max_context=2, generator=gen()) for m in (model, compiled)]
    torch.testing.assert_close(runs[1].latents, runs[0].latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runs[1].features, runs[0].features, atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] > 0  # the stacks did run compiled
