package local

// The values of the isolation setting.
const (
	// IsolationNone runs commands as ordinary child processes of the server.
	IsolationNone = "none"
	// IsolationNamespaces runs each command in new mount, PID, UTS and IPC namespaces;
	// Init fails if the kernel or the plugin's privileges do not allow it.
	IsolationNamespaces = "namespaces"
	// IsolationAuto uses namespaces where they work and falls back to none, with a
	// warning, where they do not.
	IsolationAuto = "auto"
)

// nsInitCommand is the hidden subcommand that runs as PID 1 of a command's namespaces.
const nsInitCommand = "ns-init"
