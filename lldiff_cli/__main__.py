from lldiff_cli.cli import app

app(prog_name="lldiff")
