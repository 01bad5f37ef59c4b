"""Dataset export without Dagster: licence allow-list, cross-repo dedup, secret re-scan,
file-disjoint splits, the output formats, the dataset card and the checks that read them back."""
