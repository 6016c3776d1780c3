"""A CLIP's configuration: `parts` (each tower's config, naming its kind), `schema` (the whole Config and
its checks), `registry` (named models and release facts), `cn_clip` (Chinese-CLIP's config files).
A config comes from metadata, an exact registry match or the user; it is never guessed."""
