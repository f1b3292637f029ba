"""Word-level tokenizer for the toy world, with an exact token -> (language, concept) table.

Why word-level: every token is one surface form of one concept in one language, so the
ground truth of an SAE feature's tokens is exact. The id layout follows LLM-jp
(`<unk>`=0, `<s>`=1 added first, `</s>`=2, `<pad>`=3), and the tokenizer is a plain
`transformers.PreTrainedTokenizerFast`, saved into every checkpoint directory so that
`AutoTokenizer.from_pretrained(ckpt_dir)` works without this package.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from sae_bilingual.world.lexicon import SPECIAL_TOKENS, Lexicon, vocabulary

log = logging.getLogger(__name__)

UNK, BOS, EOS, PAD = 0, 1, 2, 3


def build_tokenizer(lex: Lexicon) -> tuple[PreTrainedTokenizerFast, pd.DataFrame]:
    """Tokenizer over the whole lexicon (not the sampled corpus) plus its ground-truth table.

    Returns ``(tokenizer, ground_truth)``; ground_truth is indexed by token_id with columns
    token, lang ("" for specials), concept (-1 for function words), concept_name, pos.
    """
    rows = vocabulary(lex)
    assert tuple(r[0] for r in rows[:4]) == SPECIAL_TOKENS
    vocab = {tok: i for i, (tok, *_rest) in enumerate(rows)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS)]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    gt = pd.DataFrame(rows, columns=["token", "lang", "concept", "concept_name", "pos"])
    gt.index.name = "token_id"
    gt["concept"] = gt["concept"].astype("int64")
    return fast, gt


def save_tokenizer(tok: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Write the HF tokenizer files (tokenizer.json, tokenizer_config.json, special map)."""
    tok.save_pretrained(str(path))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved toy-world tokenizer (the same files AutoTokenizer reads)."""
    return PreTrainedTokenizerFast.from_pretrained(str(path))
