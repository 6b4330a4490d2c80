from shared.ratelimit import estimate, judge, wait_until_below


def row(requests: int, messages: int = 0, prev_requests: int = 0, prev_messages: int = 0, elapsed: float = 30.0) -> dict:
    return {"requests": requests, "messages": messages, "prev_requests": prev_requests,
            "prev_messages": prev_messages, "elapsed": elapsed}


def test_sliding_estimate_weights_the_previous_minute() -> None:
    assert estimate(100, 10, 30) == 60
    assert estimate(100, 10, 60) == 10
    assert estimate(0, 10, 0) == 10


def test_judge_requests_then_messages() -> None:
    assert judge(row(100), 1, rpm=100, mpm=1000).allowed
    refused = judge(row(101), 1, rpm=100, mpm=1000)
    assert (refused.allowed, refused.limit) == (False, "requests") and refused.retry_after_s >= 1
    refused = judge(row(5, messages=2000), 1000, rpm=100, mpm=1000)
    assert (refused.allowed, refused.limit) == (False, "messages")


def test_retry_after_is_when_the_estimate_drops() -> None:
    # 120 last minute, 0 now, 30 s in: estimate 60 > 50; the old minute drains at 2/s: 5 s.
    assert wait_until_below(120, 0, 30, 50) == 5
    # nothing before, 101 now: wait for the minute to turn (and then some of it to drain)
    assert 30 <= wait_until_below(0, 101, 30, 100) <= 31


def test_lease_size_is_half_a_percent_of_the_limit_within_bounds() -> None:
    from shared.ratelimit import LEASE_MAX, lease_size

    assert lease_size(100) == 1  # small limits: counted request by request
    assert lease_size(399) == 1 and lease_size(400) == 2
    assert lease_size(6000) == 30
    assert lease_size(300_000) == LEASE_MAX


def test_grant_gives_the_part_of_a_lease_that_fits_under_both_limits() -> None:
    from shared.ratelimit import grant

    # The row already counts the chunk of 10: 0 before it.
    assert grant(row(10, messages=10), 10, rpm=1000, mpm=1000) == 10
    # 995 counted before the chunk: 5 fit.
    assert grant(row(1005, messages=1005), 10, rpm=1000, mpm=1000) == 5
    # The messages limit is the tighter one.
    assert grant(row(30, messages=1008), 10, rpm=1000, mpm=1000) == 2
    # The previous minute still weighs half (elapsed 30 s): 1,000 × 0.5 + 495 before the chunk.
    assert grant(row(505, messages=505, prev_requests=1000, prev_messages=1000), 10, rpm=1000, mpm=10_000) == 5
    assert grant(row(1010, messages=1010), 10, rpm=1000, mpm=1000) == 0
