"""How the SQLite publish splits its rows into multi-row INSERTs."""

from __future__ import annotations

from ascend_webhooks.store.sqlite._publish import statement_sizes


def test_the_sizes_cover_every_row_each_within_one_statements_most() -> None:
    for total in range(5_000):
        sizes = statement_sizes(total)
        assert sum(sizes) == total
        assert all(1 <= size <= 1_024 for size in sizes)
        assert sizes == sorted(sizes, reverse=True)


def test_a_batch_of_the_api_takes_few_statements() -> None:
    # Each statement is a GIL hand-back for the writer thread: a 1,000-event batch (one
    # endpoint) was ten per table before.
    assert statement_sizes(1_000) == [960, 32, 8]
    assert statement_sizes(1_024) == [1_024]
    assert len(statement_sizes(2_000)) == 3  # 1,024 + 960 + 16
    assert max(len(statement_sizes(total)) for total in range(1_025)) <= 7


def test_few_distinct_statements_whatever_the_sizes_asked() -> None:
    # Every size is a prepared statement of its own in the connection's cache (about 1 KB a
    # row): the set of sizes used must stay small, whatever batch sizes callers send.
    used = {size for total in range(10_000) for size in statement_sizes(total)}
    assert len(used) == 16 + 6
