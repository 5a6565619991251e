"""What ttsr adds to an input's stem to name its output, per command.

Kept apart from the modules that write outputs (which import torch), so that the command
line can show them as defaults without loading any network code: ``ttsr --help`` stays
instant.
"""

from __future__ import annotations

#: ``ttsr upscale``'s outputs, and the stems a folder input skips (earlier outputs).
UPSCALED_SUFFIX = "_ttsr"
#: ``ttsr restore``'s outputs.
RESTORED_SUFFIX = "_restored"
