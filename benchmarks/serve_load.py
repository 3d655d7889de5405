"""Load test of `chatforge serve`: N concurrent streaming clients for a bounded time, then the same with 1.

    .venv/bin/python benchmarks/serve_load.py --run runs/demo --stage sft --clients 1,16 --duration 20
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 1,4,16   # a running server
    python3 benchmarks/serve_load.py --run runs/demo --random-init gpt2-124m --device cuda    # GPU: a 124M shape

Each client loops: POST /v1/chat/completions (stream, `max_tokens` fixed, `ignore_eos` so every answer has
the same length) with a prompt from the world, reads the SSE stream to [DONE]. Reported per client count:
requests/s, generated tokens/s (from the usage chunk), p50/p99 time to first token (first content delta),
errors (must be 0), and the aggregate-throughput ratio of the largest client count vs 1 client — both
measured in this run against the same server (goal: 16 clients >= 6x one client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def world_prompts(run: Path | None) -> list[str]:
    f = run / "world" / "prompts.jsonl" if run else None
    if f and f.is_file():
        return [json.loads(x)["prompt"][-1]["content"] for x in f.read_text().split("\n") if x.strip()][:200]
    return ["Where is the Marmidor common?", "卡奎佐靠吃什么过活？", "What does a Zogota feed on?"]


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, key: str | None) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0 = time.perf_counter()
    ttft, tokens, done = None, 0, False
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return {"error": f"HTTP {resp.status_code}: {resp.text[:200]}"}
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for ch in chunk["choices"]:
                if ttft is None and ch["delta"].get("content"):
                    ttft = time.perf_counter() - t0
    if not done:
        return {"error": "stream ended without [DONE]"}
    return {"ttft": ttft if ttft is not None else time.perf_counter() - t0, "tokens": tokens,
            "latency": time.perf_counter() - t0}


async def load(url: str, clients: int, duration: float, max_tokens: int, prompts: list[str], key: str | None) -> dict:
    results: list[dict] = []
    stop_at = time.perf_counter() + duration

    async def worker(w: int):
        async with httpx.AsyncClient(timeout=120) as client:
            i = w
            while time.perf_counter() < stop_at:
                try:
                    results.append(await one_request(client, url, prompts[i % len(prompts)], max_tokens, key))
                except httpx.HTTPError as e:
                    results.append({"error": f"{type(e).__name__}: {e}"})
                i += clients

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    wall = time.perf_counter() - t0  # includes finishing the requests in flight at the deadline
    ok = [r for r in results if "error" not in r]
    ttfts = sorted(r["ttft"] for r in ok)

    def pct(q):
        return ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] if ttfts else float("nan")

    return {"clients": clients, "requests": len(ok), "errors": len(results) - len(ok),
            "error_samples": [r["error"] for r in results if "error" in r][:3], "wall_s": wall,
            "requests_per_s": len(ok) / wall, "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "ttft_p50_s": pct(0.5), "ttft_p99_s": pct(0.99),
            "latency_mean_s": statistics.mean(r["latency"] for r in ok) if ok else float("nan")}


SHAPES = {"gpt2-124m": ("gpt2", dict(n_layer=12, n_head=12, d_model=768, max_seq_len=1024))}


def random_run(run: Path, shape: str, out: Path) -> Path:
    """A run folder whose `base` stage is a randomly initialised `shape` model with `run`'s tokenizer (speed
    depends on the shape, not on the weights)."""
    import torch

    from chatforge.model import GPT, ModelConfig, save_model
    from chatforge.tokenizer import Tokenizer

    tok = Tokenizer.load(run / "tokenizer")
    style, kw = SHAPES[shape]
    torch.manual_seed(0)
    vocab = -(-tok.vocab_size // 64) * 64
    save_model(GPT(ModelConfig.preset_style(style, vocab_size=vocab, **kw)), out / "base")
    tok.save(out / "base")
    return out


def start_server(run: str, stage: str, port: int, max_batch: int, device: str, threads: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "chatforge.cli", "serve", "--run", run, "--stage", stage, "--port", str(port),
           "--max-batch", str(max_batch), "--device", device, "--no-feedback", "--max-queue", "256"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, TQDM_DISABLE="1"))
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
    proc.kill()
    raise SystemExit("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--stage", default="sft")
    ap.add_argument("--url", default=None, help="benchmark a server that is already running")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--random-init", default=None, choices=sorted(SHAPES),
                    help="serve a randomly initialised model of this shape (with the run's tokenizer)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="the engine's torch CPU threads (serve --threads)")
    ap.add_argument("--clients", default="1,16", help="comma-separated client counts; the ratio is last vs first")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per client count")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    counts = [int(c) for c in args.clients.split(",")]
    proc = None
    url = args.url
    if args.random_init:
        import tempfile

        served = str(random_run(Path(args.run), args.random_init, Path(tempfile.mkdtemp()) / "run"))
        args.stage = "base"
    else:
        served = args.run
    if url is None:
        proc = start_server(served, args.stage, args.port, args.max_batch, args.device, args.threads)
        url = f"http://127.0.0.1:{args.port}"
    prompts = world_prompts(Path(args.run) if args.run else None)
    try:
        asyncio.run(load(url, max(counts), args.warmup, args.max_tokens, prompts, args.api_key))  # warm up
        rows = [asyncio.run(load(url, c, args.duration, args.max_tokens, prompts, args.api_key)) for c in counts]
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=20)
    what = f"random {args.random_init}" if args.random_init else f"stage={args.stage}"
    print(f"serve_load: {url}  {what}  device={args.device}  max_tokens={args.max_tokens} (ignore_eos)  "
          f"{args.duration:.0f} s per client count")
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'errors':>6}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['requests_per_s']:>7.2f} {r['tokens_per_s']:>8.1f} "
              f"{r['ttft_p50_s'] * 1000:>7.0f}ms {r['ttft_p99_s'] * 1000:>7.0f}ms {r['errors']:>6}")
        if r["errors"]:
            print("   errors:", r["error_samples"])
    ratio = rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"] if rows[0]["tokens_per_s"] else float("nan")
    print(f"aggregate throughput {rows[-1]['clients']} clients / {rows[0]['clients']} client: {ratio:.2f}x "
          f"(goal >= 6x); errors total {sum(r['errors'] for r in rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
