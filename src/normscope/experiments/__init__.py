"""Paper reproductions run by `normscope reproduce <paper>`."""
