"""Offline long-context benchmarks: data generators and scorers that need no model.

* :mod:`~titans.tasks.needle` — the needle-position task of the "titan-min" seed (with padding made explicit).
* :mod:`~titans.tasks.sniah` — RULER S-NIAH-1/2/3.
* :mod:`~titans.tasks.babi` — bAbI v1.2 parsing from the shared archive.
* :mod:`~titans.tasks.babilong` — BABILong QA1-QA5 built from bAbI and Gutenberg test books.
* :mod:`~titans.tasks.scoring` — accuracy dicts for ``report.json``.
* :mod:`~titans.tasks.export` — JSONL writers.
* :mod:`~titans.tasks.data_files` — where the shared data lives (``TITANS_DATA_DIR``).

All lengths are in the model's own tokens (a :class:`titans.tokenizer.Tokenizer`, bytes by default), and
every generator is deterministic in its seed.
"""

from titans.tasks.babi import BabiFact, BabiQuestion, babi_answer_labels, load_babi_task, parse_babi_lines
from titans.tasks.babilong import (
    BABILONG_TASKS,
    BabilongSample,
    build_babilong_sample,
    generate_babilong_samples,
    generate_babilong_suite,
    load_background_sentences,
    load_gutenberg_text,
)
from titans.tasks.data_files import DATA_DIR_ENV_VAR, data_file_available, default_data_dir, find_data_file
from titans.tasks.export import read_jsonl, write_jsonl, write_needle_datasets, write_suite
from titans.tasks.needle import (
    NEEDLE_ID,
    NEEDLE_VOCAB_SIZE,
    PAD_ID,
    NeedleBatch,
    NeedleConfig,
    NeedleDataset,
    NeedleDatasets,
    NeedleExample,
    collate_needle_batch,
    generate_needle_datasets,
    mask_padding_logits,
)
from titans.tasks.scoring import (
    babilong_output_is_correct,
    first_sentence,
    score_babilong,
    score_needle_predictions,
    score_sniah,
    sniah_output_is_correct,
)
from titans.tasks.sniah import (
    RULER_DEPTHS,
    SNIAH_TASK_NAMES,
    SNIAH_TASKS,
    SNIAHSample,
    build_sniah_prompt,
    generate_sniah_samples,
    generate_sniah_suite,
    load_paul_graham_essays,
    minimum_sniah_length,
)
from titans.tasks.text_utils import parse_token_length, split_sentences

__all__ = [
    "BABILONG_TASKS",
    "DATA_DIR_ENV_VAR",
    "NEEDLE_ID",
    "NEEDLE_VOCAB_SIZE",
    "PAD_ID",
    "RULER_DEPTHS",
    "SNIAH_TASKS",
    "SNIAH_TASK_NAMES",
    "BabiFact",
    "BabiQuestion",
    "BabilongSample",
    "NeedleBatch",
    "NeedleConfig",
    "NeedleDataset",
    "NeedleDatasets",
    "NeedleExample",
    "SNIAHSample",
    "babi_answer_labels",
    "babilong_output_is_correct",
    "build_babilong_sample",
    "build_sniah_prompt",
    "collate_needle_batch",
    "data_file_available",
    "default_data_dir",
    "find_data_file",
    "first_sentence",
    "generate_babilong_samples",
    "generate_babilong_suite",
    "generate_needle_datasets",
    "generate_sniah_samples",
    "generate_sniah_suite",
    "load_babi_task",
    "load_background_sentences",
    "load_gutenberg_text",
    "load_paul_graham_essays",
    "mask_padding_logits",
    "minimum_sniah_length",
    "parse_babi_lines",
    "parse_token_length",
    "read_jsonl",
    "score_babilong",
    "score_needle_predictions",
    "score_sniah",
    "sniah_output_is_correct",
    "split_sentences",
    "write_jsonl",
    "write_needle_datasets",
    "write_suite",
]
