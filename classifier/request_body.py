"""What Django's refusals to read an upload's request body mean, in words for whoever sent it."""
from __future__ import annotations

from django.http.multipartparser import MAX_TOTAL_HEADER_SIZE, MultiPartParserError

# Django reads the headers of each part of a form (its field's name, the file's name and type) up to
# MAX_TOTAL_HEADER_SIZE bytes in all and refuses the whole body past that. The headers other than the file's name take
# 90 to 120 bytes as browsers and HTTP libraries write them.
FILE_NAME_MAX_BYTES = (MAX_TOTAL_HEADER_SIZE - 120) // 100 * 100

FILE_NAME_TOO_LONG = (
    f"A file's name is too long: names of up to about {FILE_NAME_MAX_BYTES} bytes can be sent (a letter outside "
    "plain English takes 2 or 3, an emoji 4). Rename the file and send it again."
)


def file_name_too_long(error: BaseException | None) -> bool:
    """Whether Django refused a multipart body for a part's headers too long to read: in practice, a file's name."""
    # Django tells this refusal apart from its others only in its message.
    return isinstance(error, MultiPartParserError) and "max total header size" in str(error).lower()
