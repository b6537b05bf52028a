"""What a unit encodes, in words: a text dictionary, TextSpan, SOMP, the texts at both ends of its
principal components, and the descriptions table (METHOD section 7)."""
