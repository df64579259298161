"""libcurl through pycurl: the multi handle, easy-handle set-up, request slots per host."""
