"""From SAE codes to per-feature tables: language classes, semantic clusters, examples, lineage."""
