"""What a reader sees: notebook helpers (`notebook`), the papermill report runner (`runner`), the index page
(`index`), the console lines of `plantlib report` (`console`) and the JupyterLab widgets (`widgets`)."""
