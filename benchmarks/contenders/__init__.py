"""One module per contender, each with the same small interface (see `common.Contender`)."""
