"""Absurd but well-typed sizes get a clear error naming the limit, never `internal`."""

from __future__ import annotations

import pytest

from bgmask import errors as E
from bgmask import protocol
from bgmask.errors import BgmaskError


@pytest.mark.parametrize("stride", [2**63, 2**64 - 1, (2 << 30) + 1])
def test_a_stride_beyond_any_message_is_too_large(stride: int) -> None:
    image = {"width": 4, "height": 1, "channels": 3, "sample_type": "u8", "stride": stride}
    with pytest.raises(BgmaskError) as err:
        protocol.parse_image(image, max_pixels=1000, max_bytes=2 << 30)
    assert err.value.code == E.TOO_LARGE and "stride" in err.value.message and "2,147,483,648" in err.value.message
