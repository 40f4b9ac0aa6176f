"""PPO over the batched latent env, in CleanRL's shape: one file, every hyperparameter a flag.

The env (:class:`ie_env.batched.BatchedLatentVectorEnv`) steps ``--num-envs`` episodes of a latent task as
torch tensor operations on ``--device``; observations stay tensors on that device, so rollout, GAE and
the update never leave it. The policy is :class:`ie_agents.torch_policy.SlateActorCritic` (slate actions).
An episode ends when its query budget is spent (the budget left is in the observation, so the end is
treated as terminal); Gymnasium's same-step autoreset means ``dones[t]`` marks ``obs[t]`` as an
episode's first observation, as in CleanRL's ``ppo.py``.

Defaults follow the project's SB3 slate settings (``experiments/configs/rl_slate.yaml``: learning rate
1e-3, gamma 0.9, 10 epochs of minibatches of 256 at N = 256 x 32 steps, no entropy bonus).

Logs to TensorBoard (``LOGDIR/tb``): episodic return, ``g`` (mean ground-truth relevance of the queried
concepts: what ``ie-benchmark`` scores), losses, steps/s. Saves ``LOGDIR/policy.pt`` (+ ``.json``), which
``ie-benchmark --agents ppo=torch:LOGDIR/policy.pt`` scores, and prints one JSON summary line.

    python experiments/ppo_batched.py --task IELatent-Standard-v1 --total-timesteps 2000000 --logdir runs/ppo_b
    python experiments/ppo_batched.py --device cuda --num-envs 4096 --num-steps 64 ...
    ie-train --algo ppo-batched --task IELatent-Standard-v1 --logdir runs/ppo_b
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn, optim

if __package__ in (None, ""):  # run as a script: the repository root on the path, its import names usable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ie_env.checkout import use_checkout_names

    use_checkout_names()

from ie_agents.torch_policy import SlateActorCritic, save_policy


@dataclass
class Args:
    task: str = "IELatent-Standard-v1"  # a latent suite id (slate actions)
    logdir: str = "runs/ppo_batched"
    seed: int = 1
    device: str = "cpu"  # cpu | cuda | cuda:N
    torch_threads: int = 1  # CPU threads of torch (the env's blas_threads setting: 1 for the suite ids)
    total_timesteps: int = 2_000_000
    num_envs: int = 256
    num_steps: int = 32  # steps per env per rollout
    learning_rate: float = 1e-3
    anneal_lr: bool = True
    gamma: float = 0.9  # a query's value is mostly its own reward and the next few it unlocks
    gae_lambda: float = 0.95
    num_minibatches: int = 32
    update_epochs: int = 10
    norm_adv: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float = 0.0  # 0 = no early stop
    hidden: int = 64
    tensorboard: bool = True


def parse_args(argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(prog="ppo_batched", description=__doc__.splitlines()[0])
    for name, default in asdict(Args()).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=default, metavar="BOOL")
        else:
            p.add_argument(flag, type=type(default), default=default)
    return Args(**vars(p.parse_args(argv)))


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Module:
    if isinstance(layer, nn.Linear):
        nn.init.orthogonal_(layer.weight, std)
        nn.init.constant_(layer.bias, bias)
    return layer


def make_env(args: Args):
    from ie_env.batched import BatchedLatentVectorEnv
    from ie_env.suite import task_config

    env = BatchedLatentVectorEnv(task_config(args.task), args.num_envs, device=args.device, task_id=args.task)
    if env.mode_name != "slate":
        raise ValueError(f"ppo_batched trains slate policies; task {args.task} has action mode {env.mode_name!r}")
    return env


def train(args: Args) -> dict:
    if args.num_envs <= 0 or args.num_steps <= 0 or args.total_timesteps <= 0:
        raise ValueError("num_envs, num_steps and total_timesteps must be positive")
    if args.device == "cpu" and args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    env = make_env(args)
    if args.device == "cpu" and args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    dev = env.device
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    writer = None
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(logdir / "tb"))
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
        )

    ctx_dim = env.single_observation_space["context"].shape[0]
    K, cand_dim = env.single_observation_space["candidates"].shape
    net = SlateActorCritic(ctx_dim, cand_dim, args.hidden)
    for m in net.modules():
        layer_init(m)
    layer_init(net.value_head[-1], 1.0)
    net.to(dev)
    opt = optim.Adam(net.parameters(), lr=args.learning_rate, eps=1e-5)

    S, B = args.num_steps, args.num_envs
    batch_size = S * B
    minibatch = batch_size // args.num_minibatches
    iterations = max(1, args.total_timesteps // batch_size)
    obs_ctx = torch.zeros(S, B, ctx_dim, device=dev)
    obs_cand = torch.zeros(S, B, K, cand_dim, device=dev)
    actions = torch.zeros(S, B, dtype=torch.long, device=dev)
    logprobs = torch.zeros(S, B, device=dev)
    rewards = torch.zeros(S, B, device=dev)
    dones = torch.zeros(S, B, device=dev)
    values = torch.zeros(S, B, device=dev)

    next_obs, _ = env.reset_tensors(seed=args.seed)
    next_done = torch.zeros(B, device=dev)
    episodes: list[tuple[float, float]] = []  # (return, g) of finished episodes
    ep_return = torch.zeros(B, device=dev)
    global_step, t0 = 0, time.perf_counter()
    env_time = 0.0
    value_losses: list[float] = []  # the last minibatch's value loss of each update
    for it in range(1, iterations + 1):
        if args.anneal_lr:
            opt.param_groups[0]["lr"] = (1.0 - (it - 1.0) / iterations) * args.learning_rate
        for step in range(S):
            global_step += B
            obs_ctx[step], obs_cand[step] = next_obs["context"], next_obs["candidates"]
            dones[step] = next_done
            with torch.no_grad():
                logits, value = net(next_obs["context"], next_obs["candidates"])
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
            values[step], actions[step], logprobs[step] = value, action, dist.log_prob(action)
            te = time.perf_counter()
            next_obs, reward, term, trunc, info = env.step_tensors(action)
            env_time += time.perf_counter() - te
            rewards[step] = reward
            next_done = (term | trunc).float()
            ep_return += reward
            if "ie_episode" in info:
                ended = torch.as_tensor(info["final_envs"], device=dev)
                rets = ep_return[ended].cpu().numpy()
                ep_return[ended] = 0.0
                gs = info["ie_episode"]["mean_true_relevance"]
                episodes.extend(zip(rets.tolist(), gs.tolist(), strict=False))
                if writer is not None:
                    writer.add_scalar("charts/episodic_return", float(rets.mean()), global_step)
                    writer.add_scalar("charts/g", float(np.mean(gs)), global_step)
                    writer.add_scalar(
                        "charts/oracle_fraction", float(np.mean(info["ie_episode"]["oracle_fraction"])), global_step
                    )
        with torch.no_grad():  # GAE (CleanRL's): dones[t + 1] says obs[t + 1] starts a new episode
            _, next_value = net(next_obs["context"], next_obs["candidates"])
            advantages = torch.zeros_like(rewards)
            lastgaelam = torch.zeros(B, device=dev)
            for t in reversed(range(S)):
                if t == S - 1:
                    nextnonterminal, nextvalues = 1.0 - next_done, next_value
                else:
                    nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values
        b_ctx, b_cand = obs_ctx.reshape(batch_size, ctx_dim), obs_cand.reshape(batch_size, K, cand_dim)
        b_act, b_logp = actions.reshape(-1), logprobs.reshape(-1)
        b_adv, b_ret, b_val = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
        clipfracs = []
        for _ in range(args.update_epochs):
            perm = torch.randperm(batch_size, device=dev)
            for start in range(0, batch_size, minibatch):
                mb = perm[start : start + minibatch]
                logits, newvalue = net(b_ctx[mb], b_cand[mb])
                dist = torch.distributions.Categorical(logits=logits)
                newlogp, entropy = dist.log_prob(b_act[mb]), dist.entropy()
                logratio = newlogp - b_logp[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
                adv = b_adv[mb]
                if args.norm_adv:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(
                    -adv * ratio, -adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                ).mean()
                if args.clip_vloss:
                    v_unclipped = (newvalue - b_ret[mb]) ** 2
                    v_clipped = b_val[mb] + torch.clamp(newvalue - b_val[mb], -args.clip_coef, args.clip_coef)
                    v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - b_ret[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_ret[mb]) ** 2).mean()
                ent = entropy.mean()
                loss = pg_loss - args.ent_coef * ent + args.vf_coef * v_loss
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm)
                opt.step()
            if args.target_kl > 0 and approx_kl > args.target_kl:
                break
        sps = global_step / (time.perf_counter() - t0)
        value_losses.append(v_loss.item())
        if writer is not None:
            writer.add_scalar("charts/learning_rate", opt.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
            writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
            writer.add_scalar("losses/entropy", ent.item(), global_step)
            writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
            writer.add_scalar("losses/clipfrac", float(np.mean(clipfracs)), global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
    elapsed = time.perf_counter() - t0
    meta = {
        "task_id": args.task,
        "algo": "ppo-batched",
        "action_mode": "slate",
        "K": int(K),
        "env": json.loads(json.dumps(_env_dict(env.config), default=str)),
        "args": asdict(args),
        "global_step": global_step,
    }
    path = save_policy(logdir / "policy.pt", net.cpu(), meta)
    if writer is not None:
        writer.close()
    last = episodes[-max(1, min(len(episodes), B)) :] if episodes else []
    return {
        "policy": str(path),
        "global_step": global_step,
        "seconds": elapsed,
        "steps_per_second": global_step / elapsed,
        "env_seconds": env_time,
        "episodes": len(episodes),
        "value_loss_first": value_losses[0],
        "value_loss_last": value_losses[-1],
        "final_mean_return": float(np.mean([r for r, _ in last])) if last else None,
        "final_mean_g": float(np.mean([g for _, g in last])) if last else None,
        "device": str(dev),
    }


@torch.no_grad()
def evaluate(
    net: SlateActorCritic | None, task: str, episodes: int, seed: int, device: str = "cpu", split: str = "heldout"
) -> dict[str, float]:
    """Mean return and ``g`` (ground-truth relevance per query) of one episode on each of ``episodes`` envs
    seeded ``seed + i``, targets from ``split``: the greedy slot of ``net``, or a uniformly random slot (None)."""
    from ie_env.batched import BatchedLatentVectorEnv
    from ie_env.suite import task_config

    env = BatchedLatentVectorEnv(task_config(task, {"targets": {"mode": split}}), episodes, device=device)
    obs, _ = env.reset_tensors(seed=seed)
    gen = torch.Generator(device=env.device).manual_seed(seed)
    ret = torch.zeros(episodes, device=env.device)
    while True:
        if net is None:
            action = torch.randint(0, env.K, (episodes,), generator=gen, device=env.device)
        else:
            action = net(obs["context"], obs["candidates"])[0].argmax(1)
        obs, reward, _, trunc, info = env.step_tensors(action)
        ret += reward
        if bool(trunc.all()):
            return {"return": float(ret.mean()), "g": float(np.mean(info["ie_episode"]["mean_true_relevance"]))}


def _env_dict(cfg) -> dict:
    from ie_env.config import to_dict

    return to_dict(cfg)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = train(args)
    except ValueError as exc:
        print(f"ppo_batched: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    print(
        f"policy: {summary['policy']}  (ie-benchmark --agents ppo=torch:{summary['policy']}; "
        f"tensorboard --logdir {args.logdir}/tb)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
