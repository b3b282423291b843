"""Unit tests of bench/soak.py's verdict: the growth criterion, the series
bound and the expected answers per kind. Run by `make test-bench`."""

import unittest

import soak


def samples(rss, series=None, outside=None):
    series = series or [1000] * len(rss)
    outside = outside or rss
    return [
        {"requests": 50_000 * (index + 1), "rss_mb": value, "outside_heap_mb": outside[index], "series": series[index]}
        for index, value in enumerate(rss)
    ]


def ok_kinds():
    return {"order-read": {"statuses": {"200": 10}, "errors": 0}, "charge": {"statuses": {"200": 5, "503": 5}, "errors": 0}}


class Verdict(unittest.TestCase):
    def judge(self, run, kinds=None, errors=0):
        return soak.verdicts(run, 100_000, 16, kinds or ok_kinds(), errors)

    def test_flat_memory_after_a_warm_up_climb_passes(self):
        findings, failures = self.judge(samples([100, 180, 200, 201, 199, 202, 200, 201, 203, 202]))
        self.assertEqual(failures, [])
        self.assertTrue(any(line.startswith("RSS:") for line in findings))

    def test_steady_growth_fails(self):
        _, failures = self.judge(samples([100 + 10 * index for index in range(10)]))
        self.assertTrue(any("RSS keeps growing" in line for line in failures), failures)

    def test_growth_outside_the_heap_fails_on_its_own(self):
        rss = [200] * 10
        outside = [50 + 8 * index for index in range(10)]
        _, failures = self.judge(samples(rss, outside=outside))
        self.assertEqual(len(failures), 1)
        self.assertIn("outside Envoy's heap", failures[0])

    def test_new_series_in_the_last_half_fail(self):
        series = [1000, 1200, 1300, 1300, 1300, 1300, 1320, 1340, 1360, 1380]
        _, failures = self.judge(samples([200] * 10, series=series))
        self.assertTrue(any("series count unbounded" in line for line in failures), failures)

    def test_unexpected_statuses_and_transport_errors_fail(self):
        kinds = ok_kinds()
        kinds["order-read"]["statuses"]["500"] = 1
        _, failures = self.judge(samples([200] * 10), kinds=kinds, errors=2)
        self.assertIn("unexpected answers by kind: {'order-read': {'500': 1}}", failures)
        self.assertIn("2 transport errors", failures)

    def test_rise_is_the_fitted_line_across_the_samples(self):
        self.assertAlmostEqual(soak.rise(samples([10, 20, 30]), "rss_mb"), 20.0)
        self.assertEqual(soak.rise(samples([10]), "rss_mb"), 0.0)


if __name__ == "__main__":
    unittest.main()
