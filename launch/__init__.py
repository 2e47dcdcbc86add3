"""Launch tooling: the `greenroom` command, `greenroom up`, embedded servers, images."""
