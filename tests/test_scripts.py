"""The analysis scripts under scripts/ that README figures come from."""

import importlib.util

from specialight.evaluation.likelihood import build_texts
from tests.conftest import ROOT


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bbh_nll_parts_splits_each_reference_chain_at_its_answer_sentence(data_dir):
    texts = build_texts("nll_bbh_cot", data_dir, limit=3)
    groups = load_script("bbh_nll_parts").parts(texts)
    assert len(groups["whole"]) == 81 and len(groups["chain"]) == len(groups["answer"]) > 0
    by_id = {(t.suite, t.id): t for t in texts}
    for chain, answer in zip(groups["chain"], groups["answer"], strict=True):
        whole = by_id[(chain.suite, chain.id)]
        assert chain.prompt == whole.prompt and answer.prompt == whole.prompt + chain.target
        assert chain.target + answer.target == whole.target  # nothing lost or repeated at the cut
        assert answer.target.strip().startswith("So the answer is") and "\n" not in answer.target.strip()
        assert not chain.target.rstrip().endswith("So the answer is")
