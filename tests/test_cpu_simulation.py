"""omni_jax/cpu_simulation.py: the environment for several simulated CPU devices in one process."""

from omni_jax import cpu_simulation


def test_nothing_changes_for_one_device():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    assert not cpu_simulation.apply(env) and env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    env = {}
    assert not cpu_simulation.apply(env) and env == {}


def test_several_devices_get_the_timeouts_and_a_pool_with_threads_to_spare():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert cpu_simulation.apply(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *cpu_simulation.FLAGS.split()]
    assert int(env["PJRT_NPROC"]) == cpu_simulation.threads(2) >= 6
    assert not cpu_simulation.apply(env)  # idempotent
    # the pool of a run with one device per process, sized for the runs it is compared with
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    assert cpu_simulation.apply(env, devices=2) and env["PJRT_NPROC"] == str(cpu_simulation.threads(2))


def test_a_users_own_values_win():
    flags = "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=5"
    env = {"XLA_FLAGS": flags, "NPROC": "3"}
    cpu_simulation.apply(env)
    out = env["XLA_FLAGS"].split()
    assert out[:2] == flags.split() and "--xla_cpu_collective_call_terminate_timeout_seconds=3600" not in out
    assert "--xla_cpu_collective_call_warn_stuck_timeout_seconds=600" in out and "PJRT_NPROC" not in env
    assert cpu_simulation.simulated_devices(flags) == 8 and cpu_simulation.simulated_devices("") == 1


def test_set_devices_replaces_the_count_and_keeps_the_rest():
    flags = "--xla_force_host_platform_device_count=8 --xla_cpu_use_thunk_runtime=true"
    out = cpu_simulation.set_devices(flags, 2)
    assert out.split() == ["--xla_cpu_use_thunk_runtime=true", "--xla_force_host_platform_device_count=2"]
    assert cpu_simulation.simulated_devices(out) == 2 and cpu_simulation.set_devices("", 3).split() == [
        "--xla_force_host_platform_device_count=3"]
