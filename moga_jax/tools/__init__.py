"""Tools for planning and checking a run before renting machines: the planner (`plan`),
whole-model FLOPs (`flops`), compile checks for TPU and GPU from a CPU host."""
