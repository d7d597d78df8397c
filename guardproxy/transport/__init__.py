"""A lean HTTP/1.1 transport: a server and an upstream keep-alive pool on httptools (llhttp)."""
