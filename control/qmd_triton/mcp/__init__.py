"""The MCP server (`qmdctl mcp`): qmd for agents, over stdio and streamable HTTP."""
