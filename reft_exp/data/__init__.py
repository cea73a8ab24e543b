"""Dataset loading: one entry point for the generated task and the paper's datasets."""

from __future__ import annotations

from reft_exp.config import ArithDatasetConfig, DatasetConfig, UpstreamDatasetConfig


def load_splits(ds: DatasetConfig, cot: str) -> dict[str, list[dict]]:
    """``{"train": [...], "test": [...]}`` in the upstream record schema, limits applied."""
    if isinstance(ds, ArithDatasetConfig):
        from reft_exp.data.arith import generate_arith

        splits = generate_arith(
            ds.seed, ds.train_size, ds.test_size, cot, val_size=ds.val_size, min_steps=ds.min_steps,
            max_steps=ds.max_steps, max_start=ds.max_start, max_operand=ds.max_operand,
            distractor_prob=ds.distractor_prob, max_answer=ds.max_answer, program_forms=list(ds.program_forms),
        )
        if ds.eval_split == "val":  # every evaluation reads splits["test"]: the validation questions stand in
            splits["test"] = splits["val"]
        splits.pop("val", None)
    elif isinstance(ds, UpstreamDatasetConfig):
        from reft_exp.data.upstream import load_upstream

        return {split: load_upstream(ds, cot, split) for split in ("train", "test")}
    else:
        raise TypeError(f"unknown dataset config {type(ds).__name__}")
    limits = {"train": ds.train_limit, "test": ds.test_limit}
    return {k: v[: limits[k]] if limits[k] is not None else v for k, v in splits.items()}
