"""Generation-based E2E evaluation: greedy decoding on the unique test MRs, scored against all
the references of each MR with the metrics E2E users read, from well-kept libraries:

- BLEU: ``sacrebleu`` (corpus BLEU, its 13a tokenisation, every reference of an MR);
- NIST: ``nltk`` (``corpus_nist``, n = 5, on sacrebleu's 13a tokens);
- METEOR: ``pycocoevalcap`` (METEOR 1.5, a Java program: needs ``java`` on the PATH);
- ROUGE-L: ``rouge-score`` (F-measure, the best reference per MR, averaged);
- CIDEr: ``pycocoevalcap`` (lower-cased 13a tokens instead of its Java PTB tokenizer).

``pip install 'genadamw[e2e]'`` installs them. A metric whose library or Java is missing is
reported as ``nan`` and ``unavailable()`` says why, rather than silently left out; so is NIST
when no hypothesis is 5 tokens long (nltk divides by zero there).
"""
from __future__ import annotations

import importlib.util
import math
import shutil
import statistics
from collections.abc import Sequence

import torch
from torch import nn

from examples.e2e import SEPARATOR

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr")
NEEDS = {"BLEU": ("sacrebleu",), "NIST": ("nltk", "sacrebleu"), "METEOR": ("pycocoevalcap",),
         "ROUGE-L": ("rouge_score",), "CIDEr": ("pycocoevalcap", "sacrebleu")}


def unavailable() -> dict[str, str]:
    """Each metric that cannot run here, and why."""
    missing = {}
    for metric, modules in NEEDS.items():
        absent = [m for m in modules if importlib.util.find_spec(m) is None]
        if absent:
            missing[metric] = f"{', '.join(absent)} not installed (pip install 'genadamw[e2e]')"
    if "METEOR" not in missing and shutil.which("java") is None:
        missing["METEOR"] = "METEOR 1.5 is a Java program and no java is on the PATH"
    return missing


def references(rows: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Each unique MR (in the order it first appears) with all its references."""
    refs: dict[str, list[str]] = {}
    for mr, ref in rows:
        refs.setdefault(mr, []).append(ref)
    return refs


@torch.no_grad()
def decode(model: nn.Module, tokenizer, mrs: Sequence[str], max_new_tokens: int = 64, batch_size: int = 32) -> list[str]:
    """Greedy continuations of ``"{mr} || "`` up to the EOS token, one per MR."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # the new tokens follow every prompt directly
    outputs = []
    try:
        for i in range(0, len(mrs), batch_size):
            enc = tokenizer([mr + SEPARATOR for mr in mrs[i : i + batch_size]], return_tensors="pt", padding=True)
            tokens = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = tokens[:, enc["input_ids"].shape[1]:]
            outputs += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def score(hypotheses: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """The five E2E metrics of ``hypotheses`` against ``refs`` (all references of each); ``nan``
    for those ``unavailable()``."""
    if len(hypotheses) != len(refs) or not refs:
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(refs)} reference lists")
    hypotheses = [" ".join(h.split()) for h in hypotheses]  # METEOR's protocol is one line per segment
    refs = [[" ".join(r.split()) for r in rs] for rs in refs]
    missing = unavailable()
    scores = {metric: math.nan for metric in METRICS}
    if "BLEU" not in missing:
        import sacrebleu

        width = max(len(r) for r in refs)
        streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
        scores["BLEU"] = sacrebleu.corpus_bleu(list(hypotheses), streams).score
    tokens = _tokens() if "NIST" not in missing or "CIDEr" not in missing else None
    if "NIST" not in missing:
        from nltk.translate.nist_score import corpus_nist

        try:
            scores["NIST"] = corpus_nist([[tokens(r) for r in rs] for rs in refs], [tokens(h) for h in hypotheses], n=5)
        except ZeroDivisionError:  # nltk's, when no hypothesis has an n-gram of some order <= 5: left nan
            pass
    if "ROUGE-L" not in missing:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"])
        scores["ROUGE-L"] = statistics.fmean(scorer.score_multi(list(rs), h)["rougeL"].fmeasure
                                             for h, rs in zip(hypotheses, refs))
    if "CIDEr" not in missing:
        from pycocoevalcap.cider.cider import Cider

        scores["CIDEr"] = float(Cider().compute_score({i: [" ".join(tokens(r)) for r in rs] for i, rs in enumerate(refs)},
                                                      {i: [" ".join(tokens(h))] for i, h in enumerate(hypotheses)})[0])
    if "METEOR" not in missing:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # its __del__ ends the Java process
        scores["METEOR"] = float(meteor.compute_score({i: list(rs) for i, rs in enumerate(refs)},  # an empty
                                                      {i: [h or "."] for i, h in enumerate(hypotheses)})[0])  # line stalls it
        del meteor
    return scores


def _tokens():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    return lambda text: tokenize(text.lower()).split()
