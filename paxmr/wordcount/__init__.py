"""Word counting as pure functions over files: split, count, tally files, merge.

A word is a maximal run of bytes that are not ASCII whitespace (space, \\t, \\n, \\v, \\f, \\r),
exactly what ``bytes.split()`` cuts at. Words are kept as bytes, so text that is not valid UTF-8
is counted, stored and merged without loss; ASCII whitespace never occurs inside a multi-byte
UTF-8 character, so no cut can split one.
"""

WHITESPACE = b" \t\n\v\f\r"
