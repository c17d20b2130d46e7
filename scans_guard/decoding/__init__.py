"""What a reply must be and how it ends: constraints and their token masks, tool calls read from reply text, stop rules
and what of a reply may be streamed."""
