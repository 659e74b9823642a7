"""The ROCm fakes of tests/platform (a ROCm torch, amdsmi, an MI300X, AITER's presence), for
resolving the recipes through atom-tier's real ROCm platform class."""

from tests.platform.conftest import (  # noqa: F401  (fixtures, found by name)
    fake_aiter,
    fake_amdsmi,
    fake_rocm_device,
    rocm_platform,
)
