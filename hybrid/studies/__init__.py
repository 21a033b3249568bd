"""Study tools built on the core pipeline: many runs (experiment), their report, method design on
validation centers, subgroup and TTA diagnostics, and the backend benchmark."""
