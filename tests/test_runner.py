"""SAELens's own LanguageModelSAETrainingRunner trains the same paper_topk SAE as train_saes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from datasets import Dataset
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.config import SAESpec
from sae_bilingual.defaults import ADAM_EPS
from sae_bilingual.sae.model import new_paper_sae
from sae_bilingual.sae.topk_config import PaperTopKTrainingSAEConfig
from sae_bilingual.sae.train import TrainRun, hook_seed, train_saes

BOS, CTX, D, N, K, BS, STEPS = 1, 16, 32, 128, 8, 64, 40
HOOK = "blocks.0.hook_resid_post"


class _Recorder:
    """Hands the runner's activation batches on and keeps a copy of each."""

    def __init__(self, store: Iterator[torch.Tensor]):
        self.store, self.batches = store, []

    def __iter__(self) -> _Recorder:
        return self

    def __next__(self) -> torch.Tensor:
        b = next(self.store)
        self.batches.append(b.detach().clone())
        return b


def _model_and_docs() -> tuple[HookedTransformer, Dataset]:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=1, d_model=D, n_ctx=CTX, d_head=8, n_heads=4, d_vocab=50,
                                  act_fn="gelu", normalization_type="LN")
    g = torch.Generator().manual_seed(1)
    ids = [[BOS] + torch.randint(3, 50, (CTX - 1,), generator=g).tolist() for _ in range(64)]
    return HookedTransformer(cfg).eval(), Dataset.from_dict({"input_ids": ids})


def test_runner_trains_the_same_sae_as_train_saes(tmp_path):
    model, docs = _model_and_docs()
    spec = SAESpec(k=K, d_sae=N, lr=3e-3, batch_size=BS, warmup_steps=4)
    run = TrainRun(total_steps=STEPS, seed=0, progress=False)
    cfg = LanguageModelSAERunnerConfig(
        sae=PaperTopKTrainingSAEConfig(d_in=D, d_sae=N, k=K),  # defaults: the paper's training
        model_name="tiny", hook_name=HOOK, dataset_path="unused", is_dataset_tokenized=True,
        context_size=CTX, prepend_bos=False, exclude_special_tokens=[BOS],  # the study drops BOS
        training_tokens=STEPS * BS, train_batch_size_tokens=BS, store_batch_size_prompts=8,
        n_batches_in_buffer=4, lr=3e-3, lr_warm_up_steps=run.warmup(spec), device="cpu",
        checkpoint_path=None, output_path=str(tmp_path / "runner"), logger=LoggingConfig(log_to_wandb=False),
        verbose=False)
    torch.manual_seed(hook_seed(run.seed, HOOK))  # the seed train_saes gives this hook's SAE
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=docs, override_model=model)
    rec = _Recorder(runner.activations_store)
    runner.activations_store = rec
    trained = runner.run()

    # BOS never reaches the SAE: every row's position 0 is the same BOS vector, none was fed
    _, cache = model.run_with_cache(torch.tensor(docs["input_ids"][:1]), names_filter=HOOK)
    bos_vec = cache[HOOK][0, 0]
    fed = torch.cat(rec.batches)
    assert fed.shape == (STEPS * BS, D)
    assert (fed - bos_vec).norm(dim=-1).min() > 1e-3
    others = cache[HOOK][0, 1:]
    assert (fed[:, None] - others[None]).norm(dim=-1).min() < 1e-5  # the other positions were

    # in memory, the trained SAE's decoder rows are unit-norm (renormalised after every step)
    norms = trained.W_dec.detach().norm(dim=-1)
    assert (norms - 1).abs().max() < 1e-6

    ours = train_saes(iter([{HOOK: b} for b in rec.batches]), [HOOK], spec, run)[HOOK]
    theirs = SAE.load_from_disk(str(tmp_path / "runner"))
    assert theirs.cfg.metadata.training_architecture_details["adam_eps"] == ADAM_EPS
    for name in ("W_enc", "W_dec", "b_dec"):
        a, b = getattr(ours, name).detach(), getattr(theirs, name).detach()
        assert torch.equal(a, b), (name, (a - b).abs().max().item())
    # and the shared weights really were trained (not two copies of the initialisation)
    torch.manual_seed(hook_seed(run.seed, HOOK))
    init = new_paper_sae(D, k=K, d_sae=N, training=True)
    assert (init.W_dec - theirs.W_dec).abs().max() > 1e-2


def test_plain_adam_loop_gets_the_paper_eps_bpre_and_unit_decoder():
    torch.manual_seed(3)
    sae = new_paper_sae(16, k=4, d_sae=64, training=True)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)  # torch's default eps 1e-8
    x = torch.randn(256, 16) * 5 + 3
    from sae_lens.saes.sae import TrainStepInput

    for _ in range(3):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                       n_training_steps=0, is_logging_step=False))
        if _ == 0:  # b_pre was the geometric median of the first batch (unit-norm space)
            u = x / x.norm(dim=-1, keepdim=True)
            m = u.mean(0, dtype=torch.float64)
            for _i in range(500):  # Weiszfeld, written out
                w = 1 / (u.double() - m).norm(dim=-1)
                m = (w[:, None] * u.double()).sum(0) / w.sum()
            assert torch.allclose(sae.b_dec.detach().double(), m, atol=1e-5)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    g = opt.param_groups[0]
    assert g["eps"] == ADAM_EPS and g["fused"] is True
    assert (sae.W_dec.detach().norm(dim=-1) - 1).abs().max() < 1e-6
    # an optimiser over other parameters keeps its own eps
    other = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))])
    other.param_groups[0]["params"][0].grad = torch.ones(3)
    other.step()
    assert other.param_groups[0]["eps"] == 1e-8


def test_loaded_weights_keep_their_b_pre():
    torch.manual_seed(4)
    a = new_paper_sae(16, k=4, d_sae=64, training=True)
    with torch.no_grad():
        a.b_dec.normal_()
    b = new_paper_sae(16, k=4, d_sae=64, training=True)
    b.load_state_dict(a.state_dict())
    from sae_lens.saes.sae import TrainStepInput

    b.training_forward_pass(TrainStepInput(sae_in=torch.randn(32, 16), coefficients={}, dead_neuron_mask=None,
                                           n_training_steps=0, is_logging_step=False))
    assert torch.equal(a.b_dec, b.b_dec)
