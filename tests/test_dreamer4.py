"""Dreamer-4 model: structural guarantees (causality, masks, KV cache) and learning."""
import numpy as np
import pytest
import torch

import world_models
from envs import task_index
from world_models.dreamer4.dynamics import flow_weight
from world_models.dreamer4.tokenizer import decoder_mask, encoder_mask

B, T = 2, 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = world_models.make("dreamer4", "tiny", tasks=("toy-reach", "cup-catch"))
    # give the zero-initialised heads weights so that every output depends on its inputs
    for p in m.parameters():
        if p.dim() > 1 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1)
    return m.eval()


def tokens(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    dyn, cfg = model.dynamics, model.cfg
    z = torch.randn(B, T, dyn.n_spatial, dyn.d_spatial, generator=g)
    tau = torch.randint(0, cfg.k_max, (B, T), generator=g)
    step = torch.full((B, T), int(np.log2(cfg.k_max)))
    act = torch.rand(B, T, cfg.action_dim, generator=g)
    return z, tau, step, act, torch.ones(B, T, cfg.action_dim, dtype=torch.bool), torch.zeros(B, dtype=torch.long)


def test_dynamics_is_causal_in_time(model):
    dyn = model.dynamics
    z, tau, step, act, mask, task = tokens(model)
    out = dyn(dyn.tokens(z, tau, step, act, mask, task))[0]
    z2, act2 = z.clone(), act.clone()
    z2[:, 3] += 1.0
    act2[:, 3] = -act2[:, 3]
    out2 = dyn(dyn.tokens(z2, tau, step, act2, mask, task))[0]
    torch.testing.assert_close(out[:, :3], out2[:, :3])
    assert (out[:, 3:] - out2[:, 3:]).abs().max() > 1e-3


def test_agent_tokens_are_read_by_nothing_else(model):
    dyn = model.dynamics
    z, tau, step, act, mask, task = tokens(model)
    out = dyn(dyn.tokens(z, tau, step, act, mask, task))[0]
    out2 = dyn(dyn.tokens(z, tau, step, act, mask, task + 1))[0]  # another task's embedding
    agent = dyn.layout.agent
    torch.testing.assert_close(out[:, :, : agent.start], out2[:, :, : agent.start])
    assert (out[:, :, agent] - out2[:, :, agent]).abs().max() > 1e-3


def test_two_stream_rows_see_the_sampling_past(model):
    # a noisy frame of a two-stream training row must get exactly the prediction it gets
    # when sampled after its (clean, context_tau=1 in tiny) past, and nothing from later
    # frames; the context stream the heads train on must be the plain pass over the past
    z, tau, step, act, mask, task = tokens(model)
    x = torch.randn_like(z)
    two, h_context = model._two_stream_predict(x, z, tau, step, act, mask, task)
    dyn = model.dynamics
    past = model._commit_tokens(x, act, mask, task, None)
    torch.testing.assert_close(h_context, dyn(past)[0])
    for t in (1, 2, T - 1):
        now = dyn.tokens(z[:, t:t + 1], tau[:, t:t + 1], step[:, t:t + 1], act[:, t:t + 1], mask[:, t:t + 1], task)
        torch.testing.assert_close(two[:, t], dyn.predict_clean(dyn(torch.cat([past[:, :t], now], 1))[0])[:, -1])


def test_tokenizer_masks_hold(model):
    tok = model.tokenizer
    assert encoder_mask(2, 3)[2:, :2].any().item() is False and encoder_mask(2, 3)[:2].all()
    frames = torch.rand(1, 3, 16, 16)
    # encoder: patch tokens never read the latent tokens, so perturbing the latent queries
    # leaves every patch token's output unchanged (checked at the last encoder block)
    captured = []
    hook = tok.encoder[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    tok.encode(frames)
    with torch.no_grad():
        saved = tok.latent_queries.clone()
        tok.latent_queries.add_(torch.randn_like(saved))
    tok.encode(frames)
    with torch.no_grad():
        tok.latent_queries.copy_(saved)
    hook.remove()
    n_lat = model.cfg.n_latents
    torch.testing.assert_close(captured[0][:, n_lat:], captured[1][:, n_lat:])
    assert (captured[0][:, :n_lat] - captured[1][:, :n_lat]).abs().max() > 1e-4
    # decoder: each patch depends on the latents and its own query only
    m = decoder_mask(2, 3)
    assert m[2:, 2:].equal(torch.eye(3, dtype=torch.bool)) and m[:, :2].all()
    lat = tok.encode(frames)
    base = tok.decode(lat)
    with torch.no_grad():
        saved = tok.decoder_queries.clone()
        tok.decoder_queries[0] += 1.0
    moved = tok.decode(lat)
    with torch.no_grad():
        tok.decoder_queries.copy_(saved)
    p = model.cfg.patch
    diff = (base - moved).abs()
    assert diff[..., :p, :p].max() > 1e-4  # patch 0 changed ...
    diff[..., :p, :p] = 0
    assert diff.max() == 0                  # ... and no other patch did


def test_kv_cached_sampling_equals_uncached(model):
    obs = torch.randint(0, 256, (1, 3, 3, 16, 16), dtype=torch.uint8)
    ctx_actions = torch.rand(1, 2, 2) * 2 - 1
    plans = torch.rand(3, 6, 2) * 2 - 1
    runs = [model.imagine(obs, plans, context_actions=ctx_actions, cached=c, decode=True,
                          signals=("flow_instability",), generator=torch.Generator().manual_seed(7))
            for c in (True, False)]
    torch.testing.assert_close(runs[0].latents, runs[1].latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(runs[0].rewards, runs[1].rewards, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(runs[0].signals["flow_instability"], runs[1].signals["flow_instability"],
                               atol=1e-4, rtol=1e-4)
    assert runs[0].frames.shape == (3, 6, 3, 16, 16)


def test_imagine_contract_shapes_and_errors(model):
    obs = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    im = model.imagine(obs, torch.zeros(4, 5, 2), seeds=3, signals=("flow_instability",))
    latent = (model.cfg.n_latents, model.cfg.d_bottleneck)
    assert im.latents.shape == (4, 5, *latent) and im.rewards.shape == (4, 5)
    assert im.seed_latents.shape == (3, 4, 5, *latent) and im.frames is None
    assert im.policy_actions.shape == (4, 5, 2) and im.signals["flow_instability"].shape == (4, 5)
    assert im.features.shape == (4, 5, model.feature_dim) and im.actions.shape == (4, 5, 2)
    assert (im.seed_latents[0] != im.seed_latents[1]).any()  # seeds differ
    bc = model.imagine(obs, None, horizon=4)
    assert bc.policy_actions.shape == (1, 4, 2)
    torch.testing.assert_close(bc.actions, bc.policy_actions)  # the BC rollout takes the head's actions
    with pytest.raises(ValueError, match="actions must be"):
        model.imagine(obs, torch.zeros(5, 2))
    with pytest.raises(ValueError, match="non-finite"):
        model.imagine(obs, torch.full((1, 5, 2), float("nan")))
    with pytest.raises(ValueError, match="context_actions"):
        model.imagine(obs[:, None].expand(1, 2, 3, 16, 16), torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="natively"):
        model.imagine(obs, torch.zeros(1, 5, 2), signals=("token_entropy",))


def test_checkpoint_roundtrip(model, tmp_path):
    from world_models.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = world_models.load(tmp_path / "ckpt")
    obs = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    plan = torch.rand(2, 3, 2)
    a = model.imagine(obs, plan, generator=torch.Generator().manual_seed(0))
    b = loaded.imagine(obs, plan, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.latents, b.latents)
    assert loaded.tasks == ("toy-reach", "cup-catch")
    one_step = world_models.load(tmp_path / "ckpt", sample_steps=1)  # a sampling field, same weights
    assert one_step.cfg.sample_steps == 1 and one_step.cfg.k_max == model.cfg.k_max
    c = one_step.imagine(obs, plan, generator=torch.Generator().manual_seed(0))
    assert c.latents.shape == a.latents.shape and not torch.allclose(c.latents, a.latents)
    # the substeps can also travel with a rollout's state, changed between steps
    torch.testing.assert_close(loaded.rollout(loaded.start(obs, generator=torch.Generator().manual_seed(0),
                                                           sample_steps=1), plan).latents, c.latents)
    state = model.with_sample_steps(model.start(obs, generator=torch.Generator().manual_seed(0)), 1)
    torch.testing.assert_close(model.rollout(state, plan).latents, c.latents)
    with pytest.raises(ValueError, match=r"sample_steps must be one of \[1, 2\]"):
        model.with_sample_steps(state, 4)
    # trained without bootstrap rows, the model reads only the finest step's embedding
    # (d = 1/k_max) whatever the substep size: the coarse rows never reach a rollout
    assert one_step.cfg.self_consistency == 0
    with torch.no_grad():
        one_step.dynamics.step_embed.weight[:-1].normal_()
    d = one_step.imagine(obs, plan, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(d.latents, c.latents)
    with pytest.raises(ValueError, match="unknown Dreamer4Config field"):
        world_models.load(tmp_path / "ckpt", depth=2)


def test_shortcut_bootstrap_rows_train_coarse_steps():
    torch.manual_seed(0)
    m = world_models.make("dreamer4", "tiny", k_max=8, sample_steps=4, self_consistency=0.5,
                          bootstrap_start=0, context_tau=0.875)
    for p in m.dynamics.out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    batch = {"frames": torch.randint(0, 256, (4, 4, 3, 16, 16), dtype=torch.uint8),
             "actions": torch.rand(4, 3, 16), "rewards": torch.rand(4, 3),
             "action_mask": torch.ones(4, 16, dtype=torch.bool), "task_id": torch.full((4,), task_index("toy-reach"))}
    loss, metrics = m.loss(batch, "dynamics")
    assert metrics["dyn/bootstrap"] > 0
    loss.backward()
    coarse = m.dynamics.step_embed.weight.grad[:3]  # d = 1, 1/2, 1/4: only bootstrap rows use them
    assert coarse.abs().sum() > 0


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="powers of two"):
        world_models.make("dreamer4", "tiny", sample_steps=3)
    with pytest.raises(ValueError, match="unknown Dreamer4Config field"):
        world_models.make("dreamer4", "tiny", depth=3)
    with pytest.raises(ValueError, match="unknown preset"):
        world_models.make("dreamer4", "huge")
    with pytest.raises(ValueError, match="context_rows must be > 0"):  # the heads train on those rows
        world_models.make("dreamer4", "tiny", context_rows=0.0)
    world_models.make("dreamer4", "tiny", context_rows=0.0, reward_head=False, bc_head=False)
    with pytest.raises(ValueError, match="flow_weighting"):
        world_models.make("dreamer4", "tiny", flow_weighting="linear")


def test_flow_weights_per_noise_level():
    tau = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(flow_weight(tau, "ramp"), torch.tensor([0.1, 0.55, 1.0]))  # the paper's
    torch.testing.assert_close(flow_weight(tau, "uniform"), torch.ones(3))


def test_dynamics_loss_needs_two_frames(model):
    batch = {"frames": torch.rand(2, 1, 3, 16, 16), "actions": torch.zeros(2, 0, 16), "rewards": torch.zeros(2, 0),
             "action_mask": torch.ones(2, 16, dtype=torch.bool), "task_id": torch.full((2,), task_index("toy-reach"))}
    with pytest.raises(ValueError, match="at least 2 frames"):
        model.loss(batch, "dynamics")
