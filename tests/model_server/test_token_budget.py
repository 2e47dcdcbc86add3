"""Token-budget batching: a long input gets its own forward pass instead of padding the
short ones beside it; answers stay in order and equal to unbatched ones."""

import numpy as np

from model_server.backends import Embeddings, HashingEmbedder
from model_server.batcher import Batcher, plan_chunks
from model_server.metrics import Metrics


def test_a_long_input_gets_its_own_pass() -> None:
    lengths = [12] * 31 + [256]
    order, chunks = plan_chunks(lengths, max_size=32, max_tokens=4096)
    assert [len(chunk) for chunk in chunks] == [31, 1]
    assert chunks[1] == [31] and sorted(order) == list(range(32))


def test_passes_keep_to_the_size_and_the_budget() -> None:
    lengths = [5, 300, 40, 40, 40, 7, 120, 120]
    _, chunks = plan_chunks(lengths, max_size=3, max_tokens=250)
    for chunk in chunks:
        assert len(chunk) <= 3
        assert len(chunk) * max(lengths[i] for i in chunk) <= 250 or len(chunk) == 1
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))


class RecordingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__(dimension=32)
        self.passes: list[list[str]] = []

    def embed(self, texts: list[str]) -> Embeddings:
        self.passes.append(texts)
        return super().embed(texts)


async def test_the_batcher_splits_by_tokens_and_answers_in_order() -> None:
    embedder = RecordingEmbedder()
    batcher = Batcher(embedder.embed, max_batch_size=32, max_wait_s=0.001, queue_limit=256,
                      metrics=Metrics(), max_batch_tokens=400, lengths=embedder.count_tokens)
    batcher.start()
    texts = [f"short text number {i}" for i in range(20)]
    texts.insert(7, "long " * 300)
    try:
        result = await batcher.embed(texts)
    finally:
        await batcher.close()
    assert sorted(len(p) for p in embedder.passes) == [1, 20]
    assert ["long " * 300] in embedder.passes
    alone = HashingEmbedder(dimension=32).embed(texts)
    assert np.allclose(result.vectors, alone.vectors)
    assert result.token_counts == alone.token_counts
