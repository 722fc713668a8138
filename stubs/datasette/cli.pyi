import click

cli: click.Group
