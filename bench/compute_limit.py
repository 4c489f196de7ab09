"""The physical limit of training throughput: FLOPs per training sample and one core's peak.

FLOPs per training sample (counted from the Keras model's layer shapes, so it is the same
count for every runtime): a ``Conv2D`` with kernel (kh, kw, C_in, C_out) and output
(H_out, W_out, C_out) does H_out * W_out * kh * kw * C_in * C_out multiply-adds per sample,
a ``Dense`` with kernel (in, out) does in * out; one multiply-add is 2 FLOPs. Training is
taken as 3x the forward FLOPs (forward, gradient of the input, gradient of the weights, each
one matrix product of the forward's size). Biases, ReLU, softmax, the loss and the optimizer
update are element-wise (O(activations) or O(parameters)) and left out. The first layer needs
no input gradient, so ``training_flops_needed`` = 3 x forward - 2 x the first layer's MACs
is also recorded (the work both runtimes actually have to do).

One core's FP32 peak = FMA units x fp32 lanes per FMA x 2 FLOPs x clock. Units and lanes come
from the CPU flags and vendor (``fma_layout``: stated assumptions, not measured). The clock
under a hypervisor is not the one ``/proc/cpuinfo`` reports (that is the TSC rate), so it is
measured where a C compiler exists: a chain of dependent 1-cycle integer adds runs at one add
per cycle. The same probe measures FMA throughput directly (12 independent accumulator
chains), which cross-checks units x lanes x clock. Noise from other processes only lowers
the probe's results, so the maximum over runs is kept.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

_PROBE_C = r"""
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
#define ADD "add $1, %0\n"
/* 10 dependent 1-cycle adds per iteration: adds per second = cycles per second. */
static double clock_ghz(void) {
  long n = 10000000, x = 0; double t = now();
  __asm__ volatile("mov %1, %%rcx\n1:\n" ADD ADD ADD ADD ADD ADD ADD ADD ADD ADD
                   "dec %%rcx\njnz 1b\n" : "+r"(x) : "r"(n / 10) : "rcx");
  return n / (now() - t) / 1e9;
}
/* 12 independent chains a = a * m + c hide the FMA latency: FMA throughput only. */
#define FMA_LOOP(V, SET, FMA, ADDV, LANES) \
  V a0=SET(1),a1=SET(2),a2=SET(3),a3=SET(4),a4=SET(5),a5=SET(6),a6=SET(7),a7=SET(8), \
    a8=SET(9),a9=SET(10),a10=SET(11),a11=SET(12),m=SET(0.9999999f),c=SET(1e-7f); \
  long it = 1000000; double t = now(); \
  for (long i = 0; i < it; i++) { a0=FMA(a0,m,c);a1=FMA(a1,m,c);a2=FMA(a2,m,c);a3=FMA(a3,m,c); \
    a4=FMA(a4,m,c);a5=FMA(a5,m,c);a6=FMA(a6,m,c);a7=FMA(a7,m,c);a8=FMA(a8,m,c);a9=FMA(a9,m,c); \
    a10=FMA(a10,m,c);a11=FMA(a11,m,c); } \
  double d = now() - t; \
  V s = ADDV(ADDV(ADDV(ADDV(a0,a1),ADDV(a2,a3)),ADDV(ADDV(a4,a5),ADDV(a6,a7))), \
             ADDV(ADDV(a8,a9),ADDV(a10,a11))); \
  float out[LANES]; memcpy(out, &s, sizeof out); sink += out[0]; \
  return it * 12.0 * LANES * 2 / d / 1e9;
static volatile float sink;
__attribute__((target("avx2,fma"))) static double fma256(void) {
  FMA_LOOP(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, 8) }
__attribute__((target("avx512f"))) static double fma512(void) {
  FMA_LOOP(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, 16) }
int main(int argc, char **argv) {
  int avx512 = argc > 1 && !strcmp(argv[1], "avx512");
  double ghz = 0, f256 = 0, f512 = 0, v;
  for (int r = 0; r < 200; r++) {  /* ~3 ms each: the best runs were not preempted */
    if ((v = clock_ghz()) > ghz) ghz = v;
    if ((v = fma256()) > f256) f256 = v;
    if (avx512 && (v = fma512()) > f512) f512 = v;
  }
  printf("{\"clock_ghz\": %.4f, \"fma256_gflops\": %.2f", ghz, f256);
  if (avx512) printf(", \"fma512_gflops\": %.2f", f512);
  printf("}\n");
  return 0;
}
"""


def training_flops(model: Any) -> dict[str, Any]:
    """FLOPs per training sample of a Keras model of Conv2D / Dense / Flatten layers."""
    layers = []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue  # Flatten, Input: no arithmetic
        k = tuple(int(d) for d in kernel.shape)
        out = tuple(int(d) for d in layer.output.shape[1:])
        if len(k) == 4:  # Conv2D: (kh, kw, C_in, C_out), output (H_out, W_out, C_out)
            macs = out[0] * out[1] * k[0] * k[1] * k[2] * k[3]
        elif len(k) == 2:  # Dense: (in, out)
            macs = k[0] * k[1]
        else:
            raise ValueError(f"cannot count FLOPs of layer {layer.name} with kernel {k}")
        layers.append({"layer": layer.name, "kernel": list(k), "output": list(out), "macs": macs})
    if not layers:
        raise ValueError("the model has no Conv2D or Dense layer to count")
    forward = 2 * sum(row["macs"] for row in layers)
    return {
        "layers": layers,
        "forward_flops": forward,
        "training_flops": 3 * forward,
        "training_flops_needed": 3 * forward - 2 * layers[0]["macs"],
        "formula": "Conv2D: H_out*W_out*kh*kw*C_in*C_out MACs; Dense: in*out MACs; "
        "forward FLOPs = 2 x MACs; training = 3 x forward (needed: minus the first "
        "layer's input gradient)",
    }


def cpu_info() -> dict[str, Any]:
    """Model name, vendor, family, flags and the clocks the OS reports (lscpu, /proc/cpuinfo)."""
    info: dict[str, Any] = {"machine": platform.machine()}
    text = ""
    if shutil.which("lscpu"):
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())
    )
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in cpuinfo.split("\n\n")[0].splitlines())
    )
    info["model_name"] = fields.get("Model name") or first.get("model name", "unknown")
    info["vendor"] = fields.get("Vendor ID") or first.get("vendor_id", "")
    info["family"] = int(fields.get("CPU family") or first.get("cpu family") or 0)
    info["model"] = int(fields.get("Model") or first.get("model") or 0)
    info["hypervisor"] = fields.get("Hypervisor vendor", "")
    flags = set((fields.get("Flags") or first.get("flags") or first.get("Features", "")).split())
    info["flags"] = sorted(flags & {"fma", "avx", "avx2", "avx512f", "asimd", "neon", "sve"})
    info["all_flags"] = flags
    if "CPU max MHz" in fields:
        info["lscpu_max_mhz"] = float(fields["CPU max MHz"])
    if "cpu MHz" in first:
        info["cpuinfo_mhz"] = float(first["cpu MHz"])
    return info


def fma_layout(info: dict[str, Any]) -> tuple[int, int, str]:
    """(FMA units, fp32 lanes per FMA, the assumption in words) from the CPU's flags."""
    flags = info.get("all_flags", set(info.get("flags", ())))
    amd = info.get("vendor") == "AuthenticAMD"
    if "avx512f" in flags and amd and info.get("family", 0) < 26:
        return 2, 8, "AMD Zen 4 (AVX-512 executed as two 256-bit halves): 2 FMA pipes x 8 lanes"
    if "avx512f" in flags:
        return 2, 16, "AVX-512: assumed 2 FMA units x 16 lanes (some parts have one 512-bit unit)"
    if "fma" in flags and "avx2" in flags:
        return 2, 8, "AVX2+FMA (Haswell or Zen and later): 2 FMA units x 8 lanes"
    if "asimd" in flags or "neon" in flags:
        return 2, 4, "ARM NEON: assumed 2 FMA pipes x 4 lanes (Cortex-A72/A76 class)"
    return 1, 4, "no FMA flag: assumed one 4-lane multiply-add per cycle (SSE)"


def probe(runs: int = 3) -> dict[str, Any] | None:
    """Measured clock and FMA throughput of the calling thread's core, or None without gcc/x86."""
    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("gcc"):
        return None
    avx512 = "avx512f" in cpu_info()["all_flags"]
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "probe.c", Path(tmp) / "probe"
        src.write_text(_PROBE_C)
        build = subprocess.run(
            ["gcc", "-O2", "-o", str(exe), str(src)], capture_output=True, text=True, check=False
        )
        if build.returncode != 0:
            return {"error": "gcc failed: " + build.stderr.strip().splitlines()[-1]}
        best: dict[str, float] = {}
        for _ in range(runs):
            out = subprocess.run(
                [str(exe), "avx512" if avx512 else ""], capture_output=True, text=True, check=True
            ).stdout
            for key, value in json.loads(out).items():
                best[key] = max(best.get(key, 0.0), float(value))
    return best


def peak(info: dict[str, Any], probes: list[dict[str, Any] | None]) -> dict[str, Any]:
    """One core's FP32 peak, how it is derived, and the measured FMA throughput beside it."""
    units, lanes, assumption = fma_layout(info)
    measured = [p for p in probes if p and "clock_ghz" in p]
    fma_best = max(
        (max(p.get("fma256_gflops", 0.0), p.get("fma512_gflops", 0.0)) for p in measured),
        default=None,
    )
    if measured:
        ghz, source = max(p["clock_ghz"] for p in measured), "measured (dependent-add chain)"
    elif "lscpu_max_mhz" in info:
        ghz, source = info["lscpu_max_mhz"] / 1000, "lscpu CPU max MHz"
    else:
        ghz, source = info.get("cpuinfo_mhz", 0.0) / 1000, "/proc/cpuinfo cpu MHz"
    out: dict[str, Any] = {
        "fma_units": units,
        "fp32_lanes": lanes,
        "assumption": assumption,
        "clock_ghz": round(ghz, 3),
        "clock_source": source,
        "gflops": round(units * lanes * 2 * ghz, 1),
        "formula": f"{units} FMA units x {lanes} fp32 lanes x 2 FLOPs x {ghz:.3f} GHz",
        "measured_fma_gflops": fma_best,
        "probes": probes,
    }
    if "cpuinfo_mhz" in info:
        nominal = units * lanes * 2 * info["cpuinfo_mhz"] / 1000
        out["gflops_at_cpuinfo_mhz"] = round(nominal, 1)
    return out


def describe(info: dict[str, Any]) -> str:
    flags = ",".join(info["flags"])
    return re.sub(r"\s+", " ", f"{info['model_name']} (family {info['family']}, {flags})")
