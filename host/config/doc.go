// Package config loads and checks GitLab Runner's config.toml for Flotilla, and
// converts docker+machine runners to the docker-autoscaler form.
//
// Loading:
//
//	cfg, diags, err := config.Load("config.toml")
//	for _, d := range diags.Warnings() { slog.Warn(d.String()) }
//	if err != nil { return err } // an *InvalidError listing every error, file:line:col
//
// Load returns a configuration only when the file has no errors; it is never partly
// filled. Diagnostics name the file, line, column and key path
// ("runners[0].autoscaler.policy[1].idle_time") with a hint. Unknown keys are
// warnings (with a "did you mean" when a known key is close); wrong types and invalid
// values are errors.
//
// Zero values mean "GitLab's default", as in GitLab Runner since August 2025: read the
// effective value through the *OrDefault accessors (InstanceAcquireTimeoutOrDefault,
// CapacityPerInstanceOrDefault, PeriodsOrDefault …). plugin_config reaches the plugin
// through Autoscaler.PluginConfigJSON, and the connector settings through
// ConnectorConfig.Provider, which reads key_path (relative to the config file's
// directory, see Config.Dir).
//
// Migration: Migrate turns every docker+machine runner of a document into a
// docker-autoscaler runner and returns the warnings for what could not carry over.
package config
