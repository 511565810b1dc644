"""What a model or version name may be: one rule for the store, the routes and the OpenAPI
document."""

# 1-64 letters, digits, '.', '_', '-', starting with a letter or digit, no '..' (written without
# look-ahead so that the OpenAPI pattern is one every client and fuzzer understands).
NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
NAME_MAX_LENGTH = 64
NAME_RULE = (
    "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"
)
