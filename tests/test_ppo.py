"""PPO invariants: KL 0 and ratio 1 at step 0, engine log-probs equal training log-probs, zero advantages
change nothing, ptx_coef 0 is plain PPO, masked positions carry no loss, whitening, GAE, the stage."""

from __future__ import annotations

import json

import pytest
import torch

from chatforge import ChatforgeError
from chatforge.model import GPT, ModelConfig
from chatforge.reward import RewardModel
from chatforge.tokenizer import Tokenizer
from chatforge.train.ppo import (
    PPOConfig,
    PPOTrainer,
    build_rollouts,
    gae,
    kl_per_token,
    masked_mean,
    masked_whiten,
    ppo_losses,
    token_logprobs,
)


@pytest.fixture(scope="module")
def tok(prepared_run_template) -> Tokenizer:
    return Tokenizer.load(prepared_run_template / "tokenizer")


def _cfg(tok, **kw):
    return ModelConfig.preset_style("llama", vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4,
                                    n_kv_head=2, max_seq_len=128, **kw)


def _trainer(tok, **cfg_kw) -> PPOTrainer:
    torch.manual_seed(0)
    policy = GPT(_cfg(tok))
    with torch.no_grad():
        policy.lm_head.weight.mul_(4)  # a peakier policy, so answers end sometimes
    reference = GPT(_cfg(tok))
    reference.load_state_dict(policy.state_dict())
    rm = RewardModel(_cfg(tok))
    value = RewardModel(_cfg(tok))
    value.load_state_dict(rm.state_dict())
    cfg = PPOConfig(rollout_prompts=6, minibatch=3, ppo_epochs=2, max_new_tokens=12, **cfg_kw)
    return PPOTrainer(policy, reference, value, rm, tok, cfg)


def _prompts(tok):
    return [tok.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True)
            for q in ("Where is Elqui?", "卡洛有多少人？", "Hi", "What is 2+2?", "Tell me about Loan.", "谁是米卡戈？")]


def _batch(trainer, tok, it=0):
    prompts = _prompts(tok)
    answers, ended, outs = trainer.generate(prompts, seed=it)
    ro = build_rollouts(prompts, answers, ended, tok.pad_id, trainer.score(prompts, answers, ended))
    return trainer.prepare(ro), ro, outs


def test_step0_kl_is_zero_and_ratio_is_one(tok):
    trainer = _trainer(tok)
    batch, ro, _ = _batch(trainer, tok)
    assert torch.equal(batch["kl"], torch.zeros_like(batch["kl"]))  # policy == reference, bit for bit
    _, _, stats = ppo_losses(trainer.policy, trainer.value, batch, trainer.cfg)
    assert stats["ratio"] == 1.0 and stats["approxkl"] == 0.0 and stats["clipfrac"] == 0.0
    # the reward of each row is its score at the last answer token, nothing else (KL is 0)
    rows, cols = batch["rewards"].nonzero(as_tuple=True)
    last = batch["mask"].cumsum(1).argmax(1)
    assert set(zip(rows.tolist(), cols.tolist())) <= {(b, int(c)) for b, c in enumerate(last)}
    assert torch.allclose(batch["rewards"].sum(1), ro.scores)


def test_engine_logprobs_equal_training_forward_logprobs(tok):
    trainer = _trainer(tok)
    prompts = _prompts(tok)
    from chatforge.engine import Engine, SamplingParams

    engine = Engine(trainer.policy.eval(), tok)
    outs = engine.generate(prompts, [SamplingParams(max_tokens=10, temperature=1.0, seed=i, logprobs=0)
                                     for i in range(len(prompts))])
    # a stop token that ended an answer has its logprob too
    answers = [o.token_ids + ([o.stop_token_id] if o.stop_token_id is not None else []) for o in outs]
    ro = build_rollouts(prompts, answers, [False] * len(prompts), tok.pad_id, torch.zeros(len(prompts)))
    with torch.no_grad():
        lp = token_logprobs(trainer.policy, ro.x, ro.targets, temperature=1.0)
    for b, o in enumerate(outs):
        got = lp[b][ro.mask[b].bool()].tolist()
        assert got == pytest.approx(o.logprobs, abs=1e-4)


def test_zero_advantages_leave_the_policy_unchanged_and_ptx0_is_plain_ppo(tok, prepared_run_template):
    from chatforge.data.shards import load_split
    from chatforge.train.sampler import WindowSampler

    trainer = _trainer(tok, vf_coef=0.0)
    batch, _, _ = _batch(trainer, tok)
    batch["advantages"] = torch.zeros_like(batch["advantages"])
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.update(batch, 0)
    assert all(torch.equal(v, before[k]) for k, v in trainer.policy.state_dict().items())
    # ptx_coef = 0 with a ptx sampler present gives exactly the plain PPO update
    ptx = WindowSampler(load_split(prepared_run_template / "data", "train"), 32, 0)
    plain, mixed = _trainer(tok), _trainer(tok, ptx_coef=0.0)
    mixed.ptx = ptx
    b1, _, _ = _batch(plain, tok)
    b2, _, _ = _batch(mixed, tok)
    plain.update(b1, 0)
    mixed.update(b2, 0)
    for (k, a), b in zip(plain.policy.state_dict().items(), mixed.policy.state_dict().values()):
        assert torch.equal(a, b), k
    # and ptx_coef > 0 does change the update
    ptxed = _trainer(tok, ptx_coef=1.0, ptx_seq_len=32)
    ptxed.ptx = ptx
    b3, _, _ = _batch(ptxed, tok)
    ptxed.update(b3, 0)
    assert any(not torch.equal(a, b) for a, b in zip(plain.policy.state_dict().values(),
                                                     ptxed.policy.state_dict().values()))


def test_prompt_and_padding_positions_carry_no_loss(tok):
    trainer = _trainer(tok)
    batch, _, _ = _batch(trainer, tok)
    batch["advantages"] = torch.randn_like(batch["advantages"]) * batch["mask"]
    pg, vf, _ = ppo_losses(trainer.policy, trainer.value, batch, trainer.cfg)
    noisy = dict(batch)
    off = 1 - batch["mask"]
    for k in ("advantages", "returns", "old_logp", "old_values"):
        noisy[k] = batch[k] + 100 * torch.randn_like(batch[k]) * off  # garbage where the mask is 0
    pg2, vf2, _ = ppo_losses(trainer.policy, trainer.value, noisy, trainer.cfg)
    assert pg2.item() == pytest.approx(pg.item(), abs=1e-6) and vf2.item() == pytest.approx(vf.item(), abs=1e-6)
    assert batch["mask"].sum() > 0 and (batch["mask"] * (batch["targets"] == -100)).sum() == 0


def test_whitening_and_gae_on_masked_batches():
    torch.manual_seed(0)
    x = torch.randn(4, 7) * 3 + 5
    mask = torch.tensor([[0, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 1, 1]], dtype=torch.float)
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0, abs=1e-6)
    assert masked_mean(w ** 2, mask).item() == pytest.approx(1, abs=1e-5)
    assert torch.equal(w * (1 - mask), torch.zeros_like(w))
    # GAE with gamma = lambda = 1 and zero values: the advantage is the sum of the rewards still to come
    r = torch.randn(4, 7) * mask
    adv, ret = gae(r, torch.zeros(4, 7), mask, 1.0, 1.0)
    for b in range(4):
        idx = mask[b].nonzero().flatten().tolist()
        for j, t in enumerate(idx):
            assert adv[b, t].item() == pytest.approx(sum(r[b, u].item() for u in idx[j:]), abs=1e-5)
    # lambda = 0: one-step TD errors
    v = torch.randn(4, 7) * mask
    adv0, _ = gae(r, v, mask, 1.0, 0.0)
    idx = mask[1].nonzero().flatten().tolist()
    for j, t in enumerate(idx):
        nxt = v[1, idx[j + 1]].item() if j + 1 < len(idx) else 0.0
        assert adv0[1, t].item() == pytest.approx(r[1, t].item() + nxt - v[1, t].item(), abs=1e-5)
    # k1 / k3 KL estimators: 0 when equal; k3 >= 0
    lp, ref = torch.randn(50), torch.randn(50)
    assert torch.equal(kl_per_token(lp, lp, "k1"), torch.zeros(50)) and (kl_per_token(lp, ref, "k3") >= 0).all()


def test_answers_without_end_are_penalised(tok):
    trainer = _trainer(tok, missing_eos_penalty=2.0)
    prompts = _prompts(tok)[:2]
    answers = [[10, 11, tok.end_id], [10, 11, 12]]
    s = trainer.score(prompts, answers, [True, False])
    from chatforge.reward import score_ids

    raw = score_ids(trainer.rm, [p + a for p, a in zip(prompts, answers)], tok.pad_id)
    assert s.tolist() == pytest.approx([raw[0], raw[1] - 2.0], abs=1e-6)


def test_config_errors():
    with pytest.raises(ChatforgeError, match="kl-estimator"):
        PPOConfig(kl_estimator="k2").validate()
    with pytest.raises(ChatforgeError, match="temperature"):
        PPOConfig(temperature=0).validate()


@pytest.fixture(scope="module")
def rl_run(prepared_run_template, tmp_path_factory):
    """A run with a few-step base model standing in for SFT, and a reward model."""
    import shutil

    from chatforge.config import TrainConfig
    from chatforge.train.pretrain import run_pretrain
    from chatforge.train.rm import RMOptions, run_rm

    run = tmp_path_factory.mktemp("ppo") / "run"
    shutil.copytree(prepared_run_template, run)
    cfg = ModelConfig.preset_style("llama", vocab_size=1024, n_layer=2, d_model=64, n_head=4, n_kv_head=2,
                                   max_seq_len=128)
    run_pretrain(run, cfg, TrainConfig(max_steps=10, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=2,
                                       eval_every=10, eval_batches=1, save_every=10, log_every=5))
    shutil.copytree(run / "base", run / "sft")
    run_rm(run, TrainConfig(max_steps=2, batch_size=2, seq_len=128, lr=1e-3, warmup_steps=1, eval_every=2,
                            eval_batches=1, save_every=2, log_every=1), RMOptions(init="base"))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_ppo_on_two_processes_equals_one(rl_run, tmp_path, mode):
    import shutil
    import sys

    from tests.conftest import run_ok

    one, two = tmp_path / "one", tmp_path / "two"
    for r in (one, two):
        shutil.copytree(rl_run, r, ignore=shutil.ignore_patterns("ppo"))
    args = ["ppo", "--iterations", "2", "--rollout-prompts", "4", "--minibatch", "2", "--max-new-tokens", "8",
            "--eval-prompts", "4", "--ptx-coef", "0.5", "--ptx-rows", "2", "--ptx-seq-len", "32"]
    run_ok([sys.executable, "-m", "chatforge.cli", *args, "--run-dir", str(one)])
    # under FSDP2 also keep the reference and reward models off the device between uses: placement only
    offload = ["--offload-frozen"] if mode == "fsdp" else []
    run_ok([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
            "chatforge.cli", *args, "--run-dir", str(two), "--dist", mode, *offload])
    m1, m2 = ([json.loads(line) for line in (r / "ppo" / "metrics.jsonl").read_text().split("\n") if line]
              for r in (one, two))
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        for key in ("objective/scores", "objective/kl", "objective/entropy", "loss/policy_avg", "loss/value_avg",
                    "val/num_eos_tokens", "loss/ptx_avg"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    from safetensors.torch import load_file

    w1, w2 = (load_file(r / "ppo" / "model.safetensors") for r in (one, two))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4)


def test_ppo_stage_end_to_end(rl_run, tmp_path):
    import shutil

    from chatforge.run import read_stage_info
    from chatforge.train.ppo import run_ppo

    run = tmp_path / "run"
    shutil.copytree(rl_run, run)
    pcfg = PPOConfig(iterations=2, rollout_prompts=4, minibatch=2, max_new_tokens=8, eval_prompts=4)
    result = run_ppo(run, pcfg)
    assert read_stage_info(run / "ppo")["complete"]
    assert 0 <= result["ppo_win_rate_vs_sft"] <= 1 and result["prompts"] == 4
    recs = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().split("\n") if line]
    assert [r["iteration"] for r in recs] == [1, 2]
    assert recs[0]["objective/kl"] == 0.0  # the first rollout comes from the unchanged policy
    for key in ("objective/entropy", "objective/rlhf_reward", "objective/scores", "policy/approxkl_avg",
                "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/ratio", "val/num_eos_tokens",
                "time/generation_s", "time/training_s"):
        assert key in recs[0]
    # resume: re-running finds the last checkpoint and has nothing left to do; other settings are refused
    again = run_ppo(run, pcfg)
    assert again["ppo_win_rate_vs_sft"] == result["ppo_win_rate_vs_sft"]
    with pytest.raises(ChatforgeError, match="other settings"):
        run_ppo(run, PPOConfig(iterations=2, rollout_prompts=4, minibatch=2, max_new_tokens=8, eval_prompts=4,
                               kl_coef=0.2))


def test_rule_reward_and_its_use_in_scoring(tok):
    from chatforge.train.verifiable import rule_reward

    ref = {"chickens": 18, "rabbits": 26}
    assert rule_reward("So 18 chickens and 26 rabbits. Answer: 18 chickens, 26 rabbits", ref) == 1.0
    assert rule_reward("答案：鸡18只，兔26只", ref) == 1.0
    assert rule_reward("Answer: 26 chickens, 18 rabbits", ref) == 0.0
    assert rule_reward("Hanuka is a baker.", "baker") == 1.0 and rule_reward("Hanuka bakes.", "baker") == 0.0
    assert rule_reward("It has 4 legs.", "4") == 1.0 and rule_reward("It has 14 legs.", "4") == 0.0
    assert rule_reward("anything", None) is None
    trainer = _trainer(tok, reward="rule", rule_weight=2.0, missing_eos_penalty=0.5)
    prompts = _prompts(tok)[:3]
    answers = [tok.encode("Hanuka is a baker.") + [tok.end_id], tok.encode("No idea."), tok.encode("x") + [tok.end_id]]
    s = trainer.score(prompts, answers, [True, False, True], ["baker", "baker", None])
    assert s.tolist() == pytest.approx([2.0, -0.5, 0.0])
    both = _trainer(tok, reward="rm+rule")
    from chatforge.reward import score_ids

    rm = score_ids(both.rm, [p + a for p, a in zip(prompts, answers)], tok.pad_id)
    s2 = both.score(prompts, answers, [True, True, True], ["baker", "baker", None])
    assert s2.tolist() == pytest.approx([rm[0] + 1.0, rm[1], rm[2]], abs=1e-6)
    with pytest.raises(ChatforgeError, match="--reward"):
        PPOConfig(reward="vibes").validate()


def test_ema_of_policy_weights(tok):
    trainer = _trainer(tok, ema_decay=0.5)
    start = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    batch, _, _ = _batch(trainer, tok)
    trainer.update(batch, 0)
    trainer.update_ema()
    now = trainer.policy.state_dict()
    for k, v in trainer.ema.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.5 * start[k] + 0.5 * now[k])
    assert any(not torch.equal(trainer.ema[k], now[k]) for k in now)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_ppo_saved_on_two_processes_resumes_on_one(rl_run, tmp_path, mode):
    """Killed while saving iteration 2 under 2 processes (DDP: a full checkpoint; FSDP2: sharded); resumed on
    1 from iteration 1: same run as an uninterrupted single process."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import cli_env, run_ok

    ref, run = tmp_path / "ref", tmp_path / "run"
    for r in (ref, run):
        shutil.copytree(rl_run, r, ignore=shutil.ignore_patterns("ppo"))
    args = ["ppo", "--iterations", "3", "--rollout-prompts", "4", "--minibatch", "2", "--max-new-tokens", "8",
            "--eval-prompts", "4"]
    run_ok([sys.executable, "-m", "chatforge.cli", *args, "--run-dir", str(ref)])
    env = cli_env()
    env["CHATFORGE_TEST_KILL_IN_SAVE"] = "2"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "chatforge.cli", *args, "--run-dir", str(run), "--dist", mode], env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode != 0
    saved = run / "ppo" / ("checkpoint/meta.pt" if mode == "fsdp" else "checkpoint.pt")
    assert torch.load(saved, weights_only=True)["step"] == 1
    out = run_ok([sys.executable, "-m", "chatforge.cli", *args, "--run-dir", str(run)])
    assert "at iteration 1" in out.stdout
    m1, m2 = ([json.loads(line) for line in (r / "ppo" / "metrics.jsonl").read_text().split("\n") if line]
              for r in (ref, run))
    assert [r["iteration"] for r in m2] == [1, 2, 3]
    for a, b in zip(m1, m2):
        for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
