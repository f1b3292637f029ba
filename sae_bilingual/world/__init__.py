"""The embedded toy world: a bilingual corpus with exact ground truth, and a tiny Llama
pre-trained on it with log-spaced checkpoints — built offline on CPU in minutes.

Why: LLM-jp checkpoints are large and their data is not ours to change. A generated
world lets the study run anywhere, lets us vary the knobs the paper's phases may depend
on (bilingual share, training length, depth, concept recurrence), and makes the feature
analysis scoreable (every token's language and concept is known).

    from sae_bilingual.world import WorldConfig, build_world
    world = build_world(WorldConfig())          # cached; rebuilt only when the config changes
    world.root                                  # iter_NNNNNNN/ HF checkpoints + catalogue.json
    world.corpus["eval"][0]["input_ids"]        # BOS first, aligned with concept_ids
    world.ground_truth.loc[token_id]            # lang, concept, concept_name, pos

Modules: config (WorldConfig, presets, cache key), build (World, build_world, the cache),
lexicon (+ lexicon.tsv) / grammar / generator / variants (the corpus), tokenizer, pretrain.
"""

from __future__ import annotations

from sae_bilingual.world.build import World, build_world, default_cache_dir, is_complete, world_dir
from sae_bilingual.world.config import PRESETS, WORLD_VERSION, WorldConfig

__all__ = ["PRESETS", "WORLD_VERSION", "World", "WorldConfig", "build_world", "default_cache_dir", "is_complete",
           "world_dir"]
