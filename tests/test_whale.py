"""WHALE-ST model: structural guarantees (ST causality, straight-through VQ, KV cache,
broadcasting, checkpoints). Learning is tested in test_whale_learning.py."""
import pytest
import torch

import world_models
from envs import task_index
from world_models.checkpoint import save_checkpoint
from world_models.whale.tokenizer import local_mask

B, T = 2, 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return world_models.make("whale", "tiny").eval()


def frames(seed=0, b=B, t=T):
    return torch.rand(b, t, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_dynamics_is_causal_in_time(model):
    dyn, cfg = model.dynamics, model.cfg
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, cfg.num_codes, (B, T, 64), generator=g)
    vec = model.tokenizer.vq.lookup(codes)
    act = torch.rand(B, T, cfg.action_dim, generator=g) * 2 - 1
    mask = torch.ones(B, T, cfg.action_dim, dtype=torch.bool)
    z = torch.rand(B, T, model.behavior.z_dim, generator=g)
    task = torch.zeros(B, dtype=torch.long)
    out = dyn.logits(dyn(dyn.tokens(vec, act, mask, z, task))[0])
    codes2, act2, z2 = codes.clone(), act.clone(), z.clone()
    codes2[:, 3] = torch.randint(0, cfg.num_codes, (B, 64), generator=g)
    vec2 = model.tokenizer.vq.lookup(codes2)
    act2[:, 3], z2[:, 3] = -act2[:, 3], z2[:, 3].flip(-1)
    out2 = dyn.logits(dyn(dyn.tokens(vec2, act2, mask, z2, task))[0])
    torch.testing.assert_close(out[:, :3], out2[:, :3])
    assert (out[:, 3:] - out2[:, 3:]).abs().max() > 1e-3


def test_behavior_prior_is_causal_and_posterior_sees_the_whole_segment(model):
    beh, cfg = model.behavior, model.cfg
    f = frames()
    act = torch.rand(B, T, cfg.action_dim) * 2 - 1
    mask = torch.ones(B, T, cfg.action_dim, dtype=torch.bool)
    prior = beh.embed(f, act, mask)
    f2 = f.clone()
    f2[:, 3] = torch.rand(B, 3, 16, 16)
    prior2 = beh.embed(f2, act, mask)
    torch.testing.assert_close(prior[:, :3], prior2[:, :3])
    assert (prior[:, 3:] - prior2[:, 3:]).abs().max() > 1e-4
    # the posterior reads the future too: changing the last frame moves q
    f3 = f.clone()
    f3[:, -1] = torch.rand(B, 3, 16, 16)
    assert (beh.posterior_logits(f, act, mask) - beh.posterior_logits(f3, act, mask)).abs().max() > 1e-4


def test_vq_straight_through_gradient_reaches_the_encoder(model):
    tok = model.tokenizer
    tok.zero_grad()
    z_q, codes, _, _ = tok.vq(tok.encode_continuous(frames()[:, 0]))
    tok.decode(z_q).sum().backward()  # reconstruction only: no commitment term
    assert tok.patch_in.weight.grad is not None and tok.patch_in.weight.grad.abs().sum() > 0
    assert tok.vq.codebook.grad is None or tok.vq.codebook.grad.abs().sum() == 0
    # the forward value is the code itself
    torch.testing.assert_close(z_q, tok.vq.lookup(codes))
    tok.zero_grad()


def test_dead_codes_restart_onto_encoder_outputs():
    from world_models.whale.tokenizer import VectorQuantizer
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4).train()
    z = torch.nn.functional.normalize(torch.randn(32, 4), dim=-1)
    _, codes, _, _ = vq(z)
    used = set(codes.tolist())
    assert vq.restart_dead(z) == 8 - len(used)
    dead = [i for i in range(8) if i not in used]
    # every restarted code now sits exactly on one of the encoder outputs
    d = torch.cdist(torch.nn.functional.normalize(vq.codebook[dead], dim=-1), z,
                    compute_mode="donot_use_mm_for_euclid_dist")  # the matmul path is off by ~1e-4 at 0
    assert torch.allclose(d.min(1).values, torch.zeros(len(dead)), atol=1e-6)
    assert vq.usage.sum() == 0


def test_encoder_attention_is_local():
    m = local_mask(4, 1)
    assert m[0, 1] and m[0, 5] and not m[0, 2] and not m[0, 10]
    assert local_mask(4, 0) is None


def test_kv_cached_rollout_equals_uncached(model):
    obs = frames(1, b=1, t=3)
    ctx = torch.rand(1, 2, 2) * 2 - 1
    plans = torch.rand(4, 6, 2) * 2 - 1
    kw = dict(context_actions=ctx, signals=("token_entropy",), seeds=2)
    a = model.imagine(obs, plans, generator=torch.Generator().manual_seed(3), **kw)
    b = model.imagine(obs, plans, generator=torch.Generator().manual_seed(3), cached=False, **kw)
    torch.testing.assert_close(a.seed_latents, b.seed_latents)
    torch.testing.assert_close(a.rewards, b.rewards)
    torch.testing.assert_close(a.signals["token_entropy"], b.signals["token_entropy"])


def test_imagine_broadcasts_one_context_over_candidate_plans(model):
    obs = frames(2, b=1, t=1)[:, 0]
    im = model.imagine(obs, torch.zeros(5, 4, 2), decode=True, seeds=3, signals=("token_entropy",),
                       generator=torch.Generator().manual_seed(0))
    assert im.latents.shape == (5, 4, 64, model.cfg.latent_dim)
    assert im.rewards.shape == (5, 4) and im.frames.shape == (5, 4, 3, 16, 16)
    assert im.seed_latents.shape == (3, 5, 4, 64, model.cfg.latent_dim)
    assert (im.seed_latents[0] != im.seed_latents[1]).any()  # sampled at temperature > 0
    ent = im.signals["token_entropy"]
    assert ent.shape == (5, 4) and (ent > 0).all() and (ent <= torch.log(torch.tensor(256.0)) + 1e-4).all()
    greedy = model.imagine(obs, torch.zeros(5, 4, 2), seeds=2, temperature=0)
    torch.testing.assert_close(greedy.seed_latents[0], greedy.seed_latents[1])


def test_bad_inputs_give_clear_errors(model):
    obs = frames(0, b=1, t=1)[:, 0]
    with pytest.raises(ValueError, match="natively"):
        model.imagine(obs, torch.zeros(1, 2, 2), signals=("flow_instability",))
    with pytest.raises(ValueError, match="no BC policy"):
        model.imagine(obs, None)
    with pytest.raises(ValueError, match="context_actions"):
        model.imagine(frames(0, b=1, t=3), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="unknown WhaleConfig field"):
        world_models.make("whale", "tiny", num_cods=3)
    with pytest.raises(ValueError, match="multiple"):
        world_models.make("whale", "tiny", patch=3)


def test_ablation_without_behavior_conditioning_has_no_behavior_phase():
    m = world_models.make("whale", "tiny", behavior_conditioning=False)
    assert m.phases == ("tokenizer", "dynamics") and m.behavior is None
    batch = {"frames": (frames(0, t=4) * 255).to(torch.uint8), "actions": torch.zeros(B, 3, 16),
             "action_mask": torch.ones(B, 16, dtype=torch.bool), "rewards": torch.zeros(B, 3),
             "task_id": torch.full((B,), task_index("toy-reach"))}
    loss, metrics = m.loss(batch, "dynamics")
    assert loss.isfinite() and "dyn/token_ce" in metrics
    with pytest.raises(ValueError, match="unknown phase"):
        m.loss(batch, "behavior")
    assert m.imagine(batch["frames"][:, 0], torch.zeros(B, 3, 2)).latents.shape[:2] == (B, 3)


def test_checkpoint_round_trip(model, tmp_path):
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = world_models.load(tmp_path / "ckpt")
    assert loaded.name == "whale" and loaded.cfg == model.cfg
    obs, plan = frames(4, b=1, t=1)[:, 0], torch.rand(2, 3, 2)
    torch.testing.assert_close(loaded.imagine(obs, plan, temperature=0).latents,
                               model.imagine(obs, plan, temperature=0).latents)
