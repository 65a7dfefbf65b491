"""Tiny random models of the real scorer architectures, saved in the layouts the field's packages read, for the
model-based metric tests: a CheXbert (BERT + 14 heads), a DistilRoBERTa-shaped BERTScore encoder, a RadGraph
DyGIE archive (config.json + vocabulary/ + weights.th), RaTEScore's DeBERTa-v2 NER tagger and BERT synonym
encoder, and a Llama judge for GREEN. Weights are random (seeded): the tests compare r2g's numbers with the
packages' own on the same weights, not with published figures."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

# One vocabulary covers every test sentence: word-level, so tokenization is the same for every tokenizer built on it.
WORDS = ("no acute cardiopulmonary process mild cardiomegaly small left right pleural effusion pneumothorax "
         "is there the heart size normal lungs are clear with bibasilar atelectasis edema stable "
         "of and a , . unchanged moderate opacity consolidation lung").split()
REPORTS = [
    ("no acute cardiopulmonary process .", "no acute cardiopulmonary process ."),
    ("mild cardiomegaly . small left pleural effusion .", "mild cardiomegaly with small right pleural effusion ."),
    ("there is no pneumothorax . the lungs are clear .", "bibasilar atelectasis . no pneumothorax ."),
    ("heart size is normal . stable mild edema .", "moderate edema and right lung opacity ."),
    ("unchanged consolidation of the left lung .", "lungs are clear ."),
]


def _bert_vocab(folder: Path) -> list[str]:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return vocab


def write_tiny_bert(folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A BERT (config.json, vocab.txt, weights) loadable by AutoModel / BertTokenizer from `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _bert_vocab(folder)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(folder)
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def write_tiny_chexbert(folder: Path, seed: int = 0) -> Path:
    """CheXbert's layout: chexbert.pth ({"model_state_dict": module.bert.* + module.linear_heads.*}) and
    bert-base-uncased/ (tokenizer and config)."""
    bert_dir = write_tiny_bert(folder / "bert-base-uncased", seed=seed)
    bert = transformers.BertModel.from_pretrained(bert_dir)
    torch.manual_seed(seed + 1)
    heads = torch.nn.ModuleList([torch.nn.Linear(32, 4) for _ in range(13)] + [torch.nn.Linear(32, 2)])
    for head in heads:  # spread the logits so the argmax differs between reports
        torch.nn.init.normal_(head.weight, std=3.0)
    state = {f"module.bert.{k}": v for k, v in bert.state_dict().items()}
    state.update({f"module.linear_heads.{k}": v for k, v in heads.state_dict().items()})
    torch.save({"model_state_dict": state}, folder / "chexbert.pth")
    return folder


def write_tiny_roberta(folder: Path, seed: int = 0) -> Path:
    """DistilRoBERTa's shape (roberta, 6 layers) at hidden size 16, with a byte-level BPE tokenizer
    (vocab.json + merges.txt) trained on the test words."""
    from tokenizers import ByteLevelBPETokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 4, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tokenizer = transformers.RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                           model_max_length=128)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = transformers.RobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=6,
                                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=130,
                                        pad_token_id=tokenizer.pad_token_id)
    transformers.RobertaModel(config).save_pretrained(folder)
    return folder


RADGRAPH_CONFIG = {
    "dataset_reader": {"max_span_width": 4, "token_indexers": {"bert": {"model_name": None, "max_length": 512}}},
    "model": {"type": "dygie", "embedder": {"token_embedders": {"bert": {"model_name": None, "max_length": 512}}},
              "initializer": {}, "module_initializer": {}, "feature_size": 8, "max_span_width": 4,
              "target_task": "relation", "feedforward_params": {"num_layers": 2, "hidden_dims": 16, "dropout": 0.4},
              "loss_weights": {"ner": 0.2, "relation": 1.0, "coref": 0.0, "events": 0.0},
              "modules": {"coref": {"spans_per_word": 0.3, "max_antecedents": 10, "coref_prop": 0}, "ner": {},
                          "relation": {"spans_per_word": 0.5},
                          "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                                     "loss_weights": {"trigger": 1.0, "arguments": 1.0}}}},
}


def write_tiny_radgraph(root: Path, seed: int = 0) -> Path:
    """The radgraph package's layout, `root/radgraph/` (config.json, vocabulary/, weights.th), a DyGIE model
    over a tiny BERT (`root/bert`, named by path in config.json), built by the package's own classes."""
    from dotmap import DotMap
    from radgraph.allennlp.data import Vocabulary
    from radgraph.allennlp.modules import text_field_embedders, token_embedders
    from radgraph.dygie.models import dygie

    from r2g.metrics.local_weights import tokenizer_v4_methods

    tokenizer_v4_methods()
    bert = write_tiny_bert(root / "bert", seed=seed)
    folder = root / "radgraph"
    (folder / "vocabulary").mkdir(parents=True)
    ner = ["", "ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA"]
    relations = ["", "modify", "located_at", "suggestive_of"]
    (folder / "vocabulary" / "radgraph__ner_labels.txt").write_text("\n".join(ner) + "\n")
    (folder / "vocabulary" / "radgraph__relation_labels.txt").write_text("\n".join(relations) + "\n")
    (folder / "vocabulary" / "non_padded_namespaces.txt").write_text("*tags\n*labels\n")
    config = json.loads(json.dumps(RADGRAPH_CONFIG))
    config["dataset_reader"]["token_indexers"]["bert"]["model_name"] = str(bert)
    config["model"]["embedder"]["token_embedders"]["bert"]["model_name"] = str(bert)
    (folder / "config.json").write_text(json.dumps(config))
    vocab = Vocabulary.from_files(folder / "vocabulary", None, None)
    embedder = text_field_embedders.BasicTextFieldEmbedder(
        {"bert": token_embedders.PretrainedTransformerMismatchedEmbedder(model_name=str(bert), max_length=512)})
    params = DotMap(config).model
    for name in ("type", "embedder", "initializer", "module_initializer"):
        del params[name]
    torch.manual_seed(seed)
    model = dygie.DyGIE(vocab=vocab, embedder=embedder, **params.toDict())
    for name, p in model.named_parameters():
        if "_embedder" not in name:  # spread the scores: entities and relations of every kind get predicted
            torch.nn.init.normal_(p, std=1.0)
    torch.save(model.state_dict(), folder / "weights.th")
    return folder


RATE_TYPES = ("ABNORMALITY", "ANATOMY", "DISEASE", "NON-ABNORMALITY", "NON-DISEASE")


def write_tiny_ratescore(root: Path, seed: int = 0) -> Path:
    """RaTEScore's two models: `root/ner` a DeBERTa-v2 token classifier (B-/I- tags of its 5 entity types and O)
    with a DeBERTa-v2 (unigram) tokenizer, and `root/encoder` a tiny BERT."""
    ner = root / "ner"
    ner.mkdir(parents=True)
    pieces = [("[PAD]", 0.0), ("[UNK]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
    pieces += [(f"\u2581{w}", -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz.,"]
    tokenizer = transformers.DebertaV2Tokenizer(vocab=pieces, unk_id=1)
    tokenizer.save_pretrained(ner)
    labels = ["O"] + [f"{p}-{t}" for t in RATE_TYPES for p in ("B", "I")]
    torch.manual_seed(seed)
    config = transformers.DebertaV2Config(vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                          id2label=dict(enumerate(labels)),
                                          label2id={label: i for i, label in enumerate(labels)})
    model = transformers.DebertaV2ForTokenClassification(config)
    torch.nn.init.normal_(model.classifier.weight, std=2.0)
    model.save_pretrained(ner)
    write_tiny_bert(root / "encoder", seed=seed + 1)
    return root
