"""The im.v1 push API written once, on its protobuf messages (``proto/im_v1.proto``):
which requests are valid (``rules``) and what each method does (``methods``). The
gRPC transport serves these methods as they are; the HTTP transport decodes JSON into
the same request messages and encodes the same replies. No plugin state lives here.
"""
