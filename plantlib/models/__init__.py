"""Networks: the backbone registry, heads and weights (`backbones`); BatchNorm fusion and static padding, the fast
forms of a backbone that compute the same function (`fusion`)."""
