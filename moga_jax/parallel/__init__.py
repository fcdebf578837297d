"""The device mesh, logical-axis rules and the shardings they give, sequence parallelism for
attention (Ulysses, work shares), and TPU slices as sold."""
