"""distribute.py and launch.py: strategy, memory from shapes, batch split, launcher (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_api.v1alpha1 import DistributionStrategy as S
from kubetune_api.v1alpha1 import MethodType as M
from kubetune_trainer.distribute import (
    GIB,
    choose,
    memory_per_gpu,
    parameter_count,
    quant_storage,
    split_batch,
    training_kwargs,
)
from kubetune_trainer.launch import Topology, exit_code, torchrun_args

# config.json shapes of public models (the numbers from their model cards)
LLAMA_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}
LLAMA_70B = {
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "intermediate_size": 28672,
    "vocab_size": 128256,
}
LLAMA2_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
}
H100 = 80 * GIB


@pytest.mark.parametrize(
    ("shapes", "billions"), [(LLAMA2_7B, 6.74), (LLAMA_8B, 8.03), (LLAMA_70B, 70.55)]
)
def test_parameter_count_from_shapes(shapes: dict[str, int], billions: float) -> None:
    n = parameter_count(shapes)
    assert n is not None and abs(n / 1e9 - billions) / billions < 0.01


def test_parameter_count_unknown_shapes() -> None:
    assert parameter_count({"model_type": "bert"}) is None


def test_auto_picks_ddp_when_the_model_fits_and_fsdp_when_it_does_not() -> None:
    p8, p70 = parameter_count(LLAMA_8B), parameter_count(LLAMA_70B)
    assert choose(S.AUTO, M.LORA, 8, p8, H100).strategy == "ddp"
    assert choose(S.AUTO, M.QLORA, 8, p8, H100).strategy == "ddp"
    # 70B in bf16 (~140 GB) does not fit 80 GB: shard; in 4 bits (~40 GB) it fits
    assert choose(S.AUTO, M.LORA, 8, p70, H100).strategy == "fsdp"
    assert choose(S.AUTO, M.QLORA, 8, p70, H100).strategy == "ddp"
    assert choose(S.AUTO, M.QLORA, 8, p70, 40 * GIB).strategy == "fsdp"
    # full fine-tuning shards whatever the size; prompt methods never do
    assert choose(S.AUTO, M.FULL, 2, parameter_count(LLAMA2_7B), H100).strategy == "fsdp"
    assert choose(S.AUTO, M.PROMPT_TUNING, 8, p70, H100).strategy == "ddp"


def test_auto_on_cpu_and_alone() -> None:
    assert choose(S.AUTO, M.FULL, 2, 10**6, None).strategy == "ddp"
    assert choose(S.AUTO, M.LORA, 1, 10**6, H100).strategy == "single"


def test_the_spec_wins() -> None:
    plan = choose(S.FSDP, M.LORA, 1, parameter_count(LLAMA_8B), H100)
    assert plan.strategy == "fsdp" and plan.reason == "resources.distribution.strategy"
    # as the validated spec holds it (a plain string)
    assert choose("ddp", M.FULL, 2, 10**9, H100).strategy == "ddp"  # type: ignore[arg-type]


def test_memory_per_gpu_shrinks_with_fsdp() -> None:
    p = parameter_count(LLAMA_8B)
    assert p is not None
    ddp = memory_per_gpu(p, M.FULL, S.DDP, 8)
    fsdp = memory_per_gpu(p, M.FULL, S.FSDP, 8)
    assert ddp > 128 * GIB > H100 > fsdp  # full 8B: 16 bytes a parameter, sharded 8 ways fits
    assert memory_per_gpu(p, M.QLORA, S.DDP, 1) < memory_per_gpu(p, M.LORA, S.DDP, 1)


def test_fsdp_arguments_and_qlora_storage() -> None:
    fsdp = choose(S.FSDP, M.QLORA, 2, 10**9, H100)
    kw = training_kwargs(fsdp, M.QLORA)
    assert kw["fsdp"] == "full_shard auto_wrap"
    assert kw["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    assert kw["fsdp_config"]["use_orig_params"] is True  # frozen base + trainable adapter
    assert quant_storage(fsdp, "bfloat16") == "bfloat16"
    ddp = choose(S.DDP, M.QLORA, 2, 10**9, H100)
    assert quant_storage(ddp, "bfloat16") is None
    assert training_kwargs(ddp, M.QLORA) == {"ddp_find_unused_parameters": False}


@pytest.mark.parametrize(
    ("per_device", "accum", "procs", "expect", "kept"),
    [
        (4, 8, 2, (4, 4), True),  # accumulation shared
        (4, 1, 2, (2, 1), True),  # micro-batch shared
        (4, 3, 2, (3, 2), True),  # 12 = 3 x 2 x 2
        (4, 1, 8, (4, 1), False),  # 4 cannot be split 8 ways: grows, and says so
        (8, 2, 1, (8, 2), True),
    ],
)
def test_split_batch_keeps_the_global_batch(
    per_device: int, accum: int, procs: int, expect: tuple[int, int], kept: bool
) -> None:
    b = split_batch(per_device, accum, procs)
    assert (b["perDeviceBatchSize"], b["gradientAccumulationSteps"]) == expect
    assert b["kept"] is kept
    assert b["globalBatchSize"] == b["perDeviceBatchSize"] * procs * b["gradientAccumulationSteps"]
    assert (b["globalBatchSize"] == per_device * accum) is kept


def test_torchrun_args() -> None:
    one = torchrun_args(Topology(nproc_per_node=2), ["--config", "c.json"])
    assert one == [
        "--nproc-per-node=2",
        "--max-restarts=0",
        "--standalone",
        "-m",
        "kubetune_trainer",
        "--config",
        "c.json",
    ]
    many = torchrun_args(Topology(4, 2, 1, "j-0.j.ns.svc:29400", "uid-1"), ["--config", "c.json"])
    assert "--standalone" not in many
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-backend=static"} <= set(many)
    assert "--rdzv-endpoint=j-0.j.ns.svc:29400" in many and "--rdzv-id=uid-1" in many
    # Static rendezvous: node rank 0 hosts the store, and global rank 0 is on node rank 0
    # (ranks follow node ranks), the pod whose result the operator reads.
    assert "--node-rank=0" in torchrun_args(Topology(4, 2, 0, "h:1", "u"), [])
    with pytest.raises(ValueError, match="rdzv-endpoint"):
        torchrun_args(Topology(1, 2), [])


def test_exit_code_keeps_the_trainer_contract() -> None:
    assert exit_code({0: 0, 1: 0}) == 0
    assert exit_code({0: 10, 1: 1}) == 10  # bad config: not retryable, even through torchrun
    assert exit_code({0: 1, 1: 12}) == 12
    assert exit_code({0: 20, 1: 1}) == 20  # StorageUnavailable: retryable, reason kept
    assert exit_code({0: -15, 1: 0}) == 143
    assert exit_code({0: 1, 1: -9}) == 1


def test_local_ranks_share_one_resume_download(tmp_path: Path) -> None:
    """The processes of one pod share its work directory: one downloads the checkpoint, the
    others use that copy rather than overwrite files being read."""
    from kubetune_trainer.train import find_resume

    class Store:
        prefix = "s3://b/ckpt/"
        downloads = 0

        def latest(self) -> int:
            return 4

        def uri(self, step: int) -> str:
            return f"{self.prefix}checkpoint-{step}/"

        def download(self, step: int, dest: Path) -> Path:
            self.downloads += 1
            (dest / f"checkpoint-{step}").mkdir(parents=True)
            return dest / f"checkpoint-{step}"

    store = Store()
    first = find_resume(store, tmp_path)  # type: ignore[arg-type]
    second = find_resume(store, tmp_path)  # type: ignore[arg-type]
    assert first == second == (str(tmp_path / "resume" / "checkpoint-4"), 4)
    assert store.downloads == 1
