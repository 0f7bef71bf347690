//! Network diagnostics: path MTU and hop count, without raw sockets or external commands.
