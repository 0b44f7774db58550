// Package scheduler is diffusers' FlowMatchEulerDiscreteScheduler as the
// FLUX pipelines drive it (diffusers 0.32.2): the dynamic shift μ from the
// packed image sequence length (calculate_shift), the exponential time
// shift of np.linspace(1, 1/N, N), timesteps σ·1000 and the terminal σ = 0,
// all in float32 as diffusers computes them, so that sigmas and timesteps
// are bit-identical; the deterministic Euler step; and the training side of
// diffusers' FLUX ControlNet recipe: the timestep density
// (compute_density_for_timestep_sampling, logit-normal by default), the
// interpolation x_σ = (1 − σ)·x0 + σ·ε and the velocity target ε − x0.
package scheduler
